//! Topic forward sockets: a message on a topic configured with one is handed to the
//! application listening on that Unix socket instead of waiting in the receive queue, and the
//! application's answer goes back as the reply.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyphae_proto::message::{Config, ReceivedMessage};
use tokio::sync::oneshot;

use super::inbox::MsgCmd;
use super::shared::Shared;

/// How long a topic's forward socket may take to connect and take the payload.
const FORWARD_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it may take to answer (the reference waits forever).
const FORWARD_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages handed to forward sockets at once; more are queued as usual.
pub(crate) const MAX_FORWARDS: usize = 64;

/// Gives `msg` to the application listening on `path`, as the reference does: a new Unix
/// stream connection per message, the raw payload written, the answer read until the
/// application closes the connection and sent back as the reply (same id). hyphae also closes
/// its write side after the payload, so an application can read to the end first.
///
/// If the payload cannot be handed over (no listener, a write slower than 5 s, a socket that
/// resolves outside the forward directory) the message goes to the ordinary queue. Once the
/// application has it, it is not queued again: an empty answer, none within 60 s or a read
/// error only mean no reply (the reference queues it again after an empty answer).
pub(crate) async fn hand_over(
    shared: Arc<Shared>,
    path: PathBuf,
    msg: ReceivedMessage,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let handed = connect_and_write(&path, &shared.settings.topic_forward_dir, &msg.payload).await;
    let mut s = match handed {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %path.display(), "topic forward socket: {e}; queueing the message");
            let _ = shared.inbox.messages.send(MsgCmd::Unforwarded(msg)).await;
            return;
        }
    };
    match read_answer(&mut s).await {
        // An answer to a message that is itself a reply goes nowhere.
        Ok(reply) if !reply.is_empty() && !msg.reply => {
            let (tx, _) = oneshot::channel();
            let cmd = MsgCmd::Reply {
                id: msg.id,
                dst: Some(msg.src),
                payload: reply,
                tx,
            };
            let _ = shared.inbox.messages.send(cmd).await;
        }
        Ok(_) => tracing::debug!(socket = %path.display(), "topic forward socket: no reply"),
        Err(e) => tracing::warn!(socket = %path.display(), "topic forward socket answer: {e}"),
    }
}

/// Connects to `path` (which must resolve inside `dir`), writes `payload`, closes the write side.
async fn connect_and_write(
    path: &std::path::Path,
    dir: &std::path::Path,
    payload: &[u8],
) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    // A symbolic link must not lead the router to a socket outside the directory; and since a
    // link could be swapped in between this check and the connect, nobody but trusted users
    // may write in the directory.
    let (real, real_dir) = (std::fs::canonicalize(path)?, std::fs::canonicalize(dir)?);
    if std::fs::metadata(&real_dir)?.permissions().mode() & 0o002 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is writable by everyone", real_dir.display()),
        ));
    }
    if !real.starts_with(&real_dir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "resolves to {}, outside {}",
                real.display(),
                real_dir.display()
            ),
        ));
    }
    tokio::time::timeout(FORWARD_WRITE_TIMEOUT, async {
        let mut s = tokio::net::UnixStream::connect(&real).await?;
        s.write_all(payload).await?;
        s.shutdown().await?;
        Ok(s)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

/// Reads the application's answer until it closes the connection.
async fn read_answer(s: &mut tokio::net::UnixStream) -> std::io::Result<Bytes> {
    use tokio::io::AsyncReadExt;
    let mut reply = Vec::new();
    let limit = Config::default().max_message_size;
    tokio::time::timeout(
        FORWARD_REPLY_TIMEOUT,
        s.take(limit + 1).read_to_end(&mut reply),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    if reply.len() as u64 > limit {
        return Err(std::io::Error::other(
            "answer larger than the largest message",
        ));
    }
    Ok(Bytes::from(reply))
}
