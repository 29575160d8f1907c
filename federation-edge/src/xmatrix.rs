//! Matrix federation request authentication: canonical JSON, JSON signing and the `X-Matrix`
//! `Authorization` header.
//!
//! * [`canonical_json`]: the spec's canonical JSON (sorted keys by code point, no insignificant
//!   whitespace, integers only in `[-(2^53)+1, 2^53-1]`, floats rejected). Keys are sorted here
//!   explicitly, so the result does not depend on serde_json's `preserve_order` feature.
//! * [`SigningKey`]: an ed25519 server key (`ed25519:<version>`) that signs JSON with the spec's
//!   JSON-signing algorithm (strip `signatures` and `unsigned`, canonicalize, sign, unpadded
//!   base64).
//! * [`XMatrix`]: the parsed header (`X-Matrix origin="…",key="…",sig="…",destination="…"`),
//!   parsed by the spec's rules (RFC 9110 auth-params, case-insensitive names, quoted or bare
//!   values, backslash escapes, unknown parameters ignored) and printed in Synapse's form.
//! * [`sign_request`] / [`verify_request`]: the request object
//!   `{"method","uri","origin","destination","content"?}` signed by the origin and checked by the
//!   destination with its *own* server name and the *raw* request target (percent-escapes
//!   exactly as sent).
//!
//! Base64 follows the spec's "unpadded base64": standard alphabet, no padding when encoding;
//! padding optional and non-zero trailing bits tolerated when decoding (the spec's own test seed
//! has them).
//!
//! Nothing here panics on input: every parse and verification failure is an error value.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::Signer as _;
use serde_json::{Map, Value};

/// The spec's unpadded base64: standard alphabet, no padding on encode, padding indifferent and
/// trailing bits allowed on decode.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Largest integer canonical JSON allows (2^53 - 1).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;
/// Smallest integer canonical JSON allows (-(2^53) + 1).
pub const MIN_SAFE_INTEGER: i64 = -MAX_SAFE_INTEGER;

/// Deepest nesting [`canonical_json`] accepts (serde_json's parser stops at 128 already).
const MAX_DEPTH: usize = 512;

/// The key-ID algorithm prefix of the only signing algorithm in use.
const ED25519_PREFIX: &str = "ed25519:";

/// Encodes bytes as unpadded standard base64.
pub fn encode_base64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64, with or without padding, tolerating non-zero trailing bits.
pub fn decode_base64(text: impl AsRef<[u8]>) -> Result<Vec<u8>, base64::DecodeError> {
    B64.decode(text)
}

/// Why a JSON value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number with a fraction or exponent (canonical JSON has integers only).
    #[error("canonical JSON allows no floating-point number ({0})")]
    Float(String),
    /// An integer outside `[-(2^53)+1, 2^53-1]`.
    #[error("integer {0} is outside canonical JSON's range [-(2^53)+1, 2^53-1]")]
    IntegerOutOfRange(String),
    /// Nesting deeper than the supported limit.
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Serializes `v` as canonical JSON (Matrix appendices, "Canonical JSON").
///
/// Object keys are sorted byte-wise (which is code-point order for UTF-8), strings are escaped
/// exactly as the spec requires (`\"`, `\\`, `\b \t \n \f \r`, other control characters as
/// lower-case `\u00xx`, everything else raw UTF-8) and there is no insignificant whitespace.
pub fn canonical_json(v: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_canonical(v, &mut out, 0)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut String, depth: usize) -> Result<(), CanonicalError> {
    if depth > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let Some(i) = n.as_i64() else {
                return Err(if n.as_u64().is_some() {
                    CanonicalError::IntegerOutOfRange(n.to_string())
                } else {
                    CanonicalError::Float(n.to_string())
                });
            };
            if !(MIN_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
                return Err(CanonicalError::IntegerOutOfRange(i.to_string()));
            }
            out.push_str(&i.to_string());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Byte-wise order of UTF-8 equals code-point order; do not rely on the map's order
            // (serde_json's `preserve_order` feature may be on somewhere in the build).
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (n, (key, value)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(value, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key version is empty or has characters other than ASCII letters, digits, `_`, `-`
    /// and `.`.
    #[error("invalid key version {0:?}")]
    BadVersion(String),
    /// The seed or public key is not 32 bytes of valid base64.
    #[error("invalid key material: {0}")]
    BadKey(String),
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

/// An ed25519 server signing key with its key version (key ID `ed25519:<version>`).
///
/// `Debug` shows the key ID and public key only, never the seed.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    key_id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key. `version` may be given bare (`abc`) or as a key ID (`ed25519:abc`).
    pub fn generate(version: &str) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = Self::from_seed(version, seed);
        seed.fill(0);
        key
    }

    /// The key with this 32-byte ed25519 seed. `version` may be bare or a full key ID.
    pub fn from_seed(version: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        let version = version.strip_prefix(ED25519_PREFIX).unwrap_or(version);
        let valid = !version.is_empty()
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(KeyError::BadVersion(version.to_owned()));
        }
        Ok(Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            key_id: format!("{ED25519_PREFIX}{version}"),
        })
    }

    /// The key with this unpadded-base64 seed (as in Synapse's signing-key file and the spec's
    /// test vectors).
    pub fn from_seed_base64(version: &str, seed: &str) -> Result<Self, KeyError> {
        let bytes = decode_base64(seed).map_err(|e| KeyError::BadKey(e.to_string()))?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::BadKey(format!("seed is {} bytes, not 32", bytes.len())))?;
        Self::from_seed(version, seed)
    }

    /// Parses one line of a Synapse signing-key file: `ed25519 <version> <base64 seed>`.
    pub fn from_synapse_key_line(line: &str) -> Result<Self, KeyError> {
        let mut parts = line.split_ascii_whitespace();
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ed25519"), Some(version), Some(seed), None) => {
                Self::from_seed_base64(version, seed)
            }
            _ => Err(KeyError::BadKey(
                "expected `ed25519 <version> <seed>`".to_owned(),
            )),
        }
    }

    /// The key ID, `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key version (the key ID without `ed25519:`).
    pub fn version(&self) -> &str {
        self.key_id
            .strip_prefix(ED25519_PREFIX)
            .unwrap_or(&self.key_id)
    }

    /// The 32-byte seed (secret).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key in unpadded base64, as published in `verify_keys`.
    pub fn public_base64(&self) -> String {
        encode_base64(self.public_key())
    }

    /// Signs raw bytes; the unpadded-base64 signature.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        encode_base64(self.key.sign(message).to_bytes())
    }

    /// The JSON-signing algorithm: removes `signatures` and `unsigned` (from an object),
    /// canonicalizes the rest and signs it. Returns the unpadded-base64 signature.
    pub fn sign_json(&self, v: &Value) -> Result<String, CanonicalError> {
        Ok(self.sign_bytes(signable_json(v)?.as_bytes()))
    }

    /// Signs the object `v` as `entity` and stores the signature at
    /// `signatures[entity][key_id]`, keeping other signatures and `unsigned`.
    /// A non-object `v` is left alone and is an error.
    pub fn sign_json_in_place(&self, v: &mut Value, entity: &str) -> Result<(), SignError> {
        let sig = self.sign_json(v)?;
        let Value::Object(obj) = v else {
            return Err(SignError::NotAnObject);
        };
        let signatures = obj
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(signatures) = signatures else {
            return Err(SignError::BadSignaturesField);
        };
        let per_entity = signatures
            .entry(entity)
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(per_entity) = per_entity else {
            return Err(SignError::BadSignaturesField);
        };
        per_entity.insert(self.key_id.clone(), Value::String(sig));
        Ok(())
    }
}

/// Why [`SigningKey::sign_json_in_place`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The value has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// Only objects carry signatures.
    #[error("only a JSON object can carry signatures")]
    NotAnObject,
    /// `signatures` (or `signatures[entity]`) exists but is not an object.
    #[error("`signatures` is not an object of objects")]
    BadSignaturesField,
}

/// The bytes the JSON-signing algorithm signs: `v` without `signatures` and `unsigned`, in
/// canonical form.
pub fn signable_json(v: &Value) -> Result<String, CanonicalError> {
    match v {
        Value::Object(obj) if obj.contains_key("signatures") || obj.contains_key("unsigned") => {
            let stripped: Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| k.as_str() != "signatures" && k.as_str() != "unsigned")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            canonical_json(&Value::Object(stripped))
        }
        _ => canonical_json(v),
    }
}

/// Decodes an unpadded-base64 ed25519 public key (as found in `verify_keys`).
pub fn public_key_from_base64(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = decode_base64(text).map_err(|e| KeyError::BadKey(e.to_string()))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::BadKey(format!("public key is {} bytes, not 32", bytes.len())))
}

/// Checks an ed25519 signature (unpadded base64) over `message`.
///
/// Uses strict verification (no malleable or small-order forms), as libsodium does for
/// Synapse.
pub fn verify_bytes(
    message: &[u8],
    sig_b64: &str,
    public_key: &[u8; 32],
) -> Result<(), XMatrixError> {
    let sig = decode_base64(sig_b64).map_err(|_| XMatrixError::BadSignatureEncoding)?;
    let sig = ed25519_dalek::Signature::from_slice(&sig)
        .map_err(|_| XMatrixError::BadSignatureEncoding)?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .map_err(|_| XMatrixError::BadPublicKey)?;
    key.verify_strict(message, &sig)
        .map_err(|_| XMatrixError::BadSignature)
}

/// Checks the signature `signatures[entity][key_id]` of a signed JSON object (for example a
/// server key document) with `public_key`.
pub fn verify_json(
    v: &Value,
    entity: &str,
    key_id: &str,
    public_key: &[u8; 32],
) -> Result<(), XMatrixError> {
    if !key_id.starts_with(ED25519_PREFIX) {
        return Err(XMatrixError::UnsupportedAlgorithm(key_id.to_owned()));
    }
    let sig = v
        .get("signatures")
        .and_then(|s| s.get(entity))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or(XMatrixError::MissingSignature)?;
    verify_bytes(signable_json(v)?.as_bytes(), sig, public_key)
}

/// Why an `X-Matrix` header is malformed or a request's signature does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XMatrixError {
    /// The header's scheme is not `X-Matrix`.
    #[error("authorization scheme is not X-Matrix")]
    NotXMatrix,
    /// The header does not follow the auth-param syntax.
    #[error("malformed X-Matrix header: {0}")]
    Malformed(&'static str),
    /// A parameter value (after unescaping) is not UTF-8.
    #[error("X-Matrix parameter {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A required parameter is absent or empty.
    #[error("X-Matrix header has no {0}")]
    MissingParam(&'static str),
    /// A known parameter appears twice.
    #[error("X-Matrix parameter {0} appears twice")]
    DuplicateParam(&'static str),
    /// The header names a destination other than this server.
    #[error("destination mismatch in X-Matrix header: signed for {header:?}, this is {own:?}")]
    DestinationMismatch {
        /// The header's `destination`.
        header: String,
        /// The receiving server's own name.
        own: String,
    },
    /// The key ID's algorithm is not `ed25519`.
    #[error("unsupported key algorithm in key ID {0:?}")]
    UnsupportedAlgorithm(String),
    /// The signature is not base64 of 64 bytes.
    #[error("signature is not 64 bytes of base64")]
    BadSignatureEncoding,
    /// The public key is not a valid ed25519 point.
    #[error("invalid ed25519 public key")]
    BadPublicKey,
    /// The signature does not match.
    #[error("invalid signature")]
    BadSignature,
    /// A signed JSON object has no signature by the wanted entity and key.
    #[error("no signature by the expected entity and key")]
    MissingSignature,
    /// The request content has no canonical form, so it cannot have been signed.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// A parsed `Authorization: X-Matrix …` header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XMatrix {
    /// The sending server's name.
    pub origin: String,
    /// The receiving server's name; absent in headers of senders older than spec v1.3.
    pub destination: Option<String>,
    /// The key ID that made `sig`, e.g. `ed25519:a_XQZH`.
    pub key: String,
    /// The unpadded-base64 ed25519 signature of the request object.
    pub sig: String,
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Characters accepted in an unquoted value: RFC 9110 `token`, plus `:` (the spec asks
/// receivers to accept unquoted values with colons) and the other visible characters that
/// cannot be confused with the list syntax (`/`, `=`, `[`, `]`, `@`, …), so an unquoted
/// base64 signature or IPv6 server name still parses. `,`, `"`, `\` and whitespace end it.
fn is_bare_value_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !matches!(b, b',' | b'"' | b'\\')
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A tiny cursor over header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.bytes[start..self.pos]
    }

    /// A quoted-string, opening quote at the cursor; returns the unescaped bytes.
    fn quoted(&mut self) -> Result<Vec<u8>, XMatrixError> {
        self.pos += 1; // the opening quote
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(XMatrixError::Malformed("unterminated quoted string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(value);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b)
                            if b == b'\t'
                                || b == b' '
                                || (0x21..=0x7e).contains(&b)
                                || b >= 0x80 =>
                        {
                            value.push(b);
                            self.pos += 1;
                        }
                        _ => return Err(XMatrixError::Malformed("bad escape in quoted string")),
                    }
                }
                Some(b) if b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
                    value.push(b);
                    self.pos += 1;
                }
                Some(_) => {
                    return Err(XMatrixError::Malformed(
                        "control character in quoted string",
                    ));
                }
            }
        }
    }
}

impl XMatrix {
    /// Parses an `Authorization` header value (`X-Matrix origin=…,key=…,sig=…[,destination=…]`).
    ///
    /// Follows the spec: the scheme (case-insensitive) and at least one space, then
    /// comma-separated `name=value` pairs with optional whitespace around commas and `=`;
    /// names are case-insensitive; values are quoted strings (backslash escapes undone) or bare
    /// tokens, also with `:`; unknown parameters are ignored. `origin`, `key` and `sig` are
    /// required and must be non-empty; a known parameter given twice is an error.
    pub fn parse(header_value: &[u8]) -> Result<Self, XMatrixError> {
        let mut cur = Cursor {
            bytes: header_value,
            pos: 0,
        };
        cur.skip_ows();
        let scheme = cur.take_while(is_tchar);
        if !scheme.eq_ignore_ascii_case(b"X-Matrix") {
            return Err(XMatrixError::NotXMatrix);
        }
        if !cur.peek().is_some_and(is_ows) {
            return Err(XMatrixError::Malformed("no space after the scheme"));
        }
        cur.skip_ows();

        let mut origin: Option<String> = None;
        let mut destination: Option<String> = None;
        let mut key: Option<String> = None;
        let mut sig: Option<String> = None;

        loop {
            // Empty list elements (`a=1, ,b=2`) are allowed by RFC 9110's list syntax.
            while cur.peek().is_some_and(|b| is_ows(b) || b == b',') {
                cur.pos += 1;
            }
            if cur.peek().is_none() {
                break;
            }
            let name = cur.take_while(is_tchar).to_ascii_lowercase();
            if name.is_empty() {
                return Err(XMatrixError::Malformed("expected a parameter name"));
            }
            cur.skip_ows();
            if cur.peek() != Some(b'=') {
                return Err(XMatrixError::Malformed(
                    "expected `=` after a parameter name",
                ));
            }
            cur.pos += 1;
            cur.skip_ows();
            let value = if cur.peek() == Some(b'"') {
                cur.quoted()?
            } else {
                let bare = cur.take_while(is_bare_value_char);
                if bare.is_empty() {
                    return Err(XMatrixError::Malformed("expected a parameter value"));
                }
                bare.to_vec()
            };
            cur.skip_ows();
            match cur.peek() {
                None | Some(b',') => {}
                Some(_) => return Err(XMatrixError::Malformed("expected `,` after a value")),
            }
            let (slot, label) = match name.as_slice() {
                b"origin" => (&mut origin, "origin"),
                b"destination" => (&mut destination, "destination"),
                b"key" => (&mut key, "key"),
                b"sig" => (&mut sig, "sig"),
                _ => continue,
            };
            if slot.is_some() {
                return Err(XMatrixError::DuplicateParam(label));
            }
            *slot = Some(String::from_utf8(value).map_err(|_| XMatrixError::NotUtf8(label))?);
        }

        let required = |v: Option<String>, label| match v {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(XMatrixError::MissingParam(label)),
        };
        Ok(Self {
            origin: required(origin, "origin")?,
            key: required(key, "key")?,
            sig: required(sig, "sig")?,
            destination,
        })
    }
}

impl FromStr for XMatrix {
    type Err = XMatrixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

/// Writes `value` as a quoted string, escaping `"` and `\`.
fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    f.write_str("\"")?;
    let mut rest = value;
    while let Some(i) = rest.find(['"', '\\']) {
        // Both special characters are one byte, so `i + 1` is a character boundary.
        let (plain, special) = rest.split_at(i);
        let (special, after) = special.split_at(1);
        f.write_str(plain)?;
        f.write_str("\\")?;
        f.write_str(special)?;
        rest = after;
    }
    f.write_str(rest)?;
    f.write_str("\"")
}

impl fmt::Display for XMatrix {
    /// Synapse's form: `X-Matrix origin="…",key="…",sig="…",destination="…"` (destination
    /// omitted when absent).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("X-Matrix origin=")?;
        write_quoted(f, &self.origin)?;
        f.write_str(",key=")?;
        write_quoted(f, &self.key)?;
        f.write_str(",sig=")?;
        write_quoted(f, &self.sig)?;
        if let Some(destination) = &self.destination {
            f.write_str(",destination=")?;
            write_quoted(f, destination)?;
        }
        Ok(())
    }
}

/// The JSON object that X-Matrix signs:
/// `{"method","uri","origin","destination"[,"content"]}`.
///
/// `uri` is the raw request target (path and query exactly as sent, percent-escapes unchanged).
pub fn request_object(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&Value>,
) -> Value {
    let mut obj = Map::new();
    obj.insert("method".to_owned(), Value::String(method.to_owned()));
    obj.insert("uri".to_owned(), Value::String(uri.to_owned()));
    obj.insert("origin".to_owned(), Value::String(origin.to_owned()));
    obj.insert(
        "destination".to_owned(),
        Value::String(destination.to_owned()),
    );
    if let Some(content) = content {
        obj.insert("content".to_owned(), content.clone());
    }
    Value::Object(obj)
}

/// The canonical JSON of [`request_object`], written directly so that a large `content` is
/// not copied. Keys in canonical order: content, destination, method, origin, uri.
pub fn canonical_request(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&Value>,
) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(128 + uri.len());
    out.push('{');
    if let Some(content) = content {
        out.push_str("\"content\":");
        write_canonical(content, &mut out, 1)?;
        out.push(',');
    }
    for (n, (name, value)) in [
        ("destination", destination),
        ("method", method),
        ("origin", origin),
        ("uri", uri),
    ]
    .into_iter()
    .enumerate()
    {
        if n > 0 {
            out.push(',');
        }
        write_string(name, &mut out);
        out.push(':');
        write_string(value, &mut out);
    }
    out.push('}');
    Ok(out)
}

/// Signs a federation request as `origin` for `destination` and returns its `X-Matrix` header.
///
/// `uri` is the raw request target as it will be sent; `content` is the JSON body, if any.
/// Fails only if `content` has no canonical form (floats, out-of-range integers).
pub fn sign_request(
    key: &SigningKey,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> Result<XMatrix, CanonicalError> {
    let signed = canonical_request(method, uri, origin, destination, content)?;
    Ok(XMatrix {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: key.key_id().to_owned(),
        sig: key.sign_bytes(signed.as_bytes()),
    })
}

/// Checks a received request's `X-Matrix` header as the server `own_name`, like Synapse does.
///
/// The request object is rebuilt with `destination = own_name` (a header `destination` that
/// differs is rejected outright), the raw request target `uri` exactly as received, `method`
/// and the parsed JSON body `content`. `public_key` is `x.origin`'s key `x.key`; looking it up
/// is the caller's job.
pub fn verify_request(
    x: &XMatrix,
    own_name: &str,
    method: &str,
    uri: &str,
    content: Option<&Value>,
    public_key: &[u8; 32],
) -> Result<(), XMatrixError> {
    if let Some(destination) = &x.destination
        && destination != own_name
    {
        return Err(XMatrixError::DestinationMismatch {
            header: destination.clone(),
            own: own_name.to_owned(),
        });
    }
    if !x.key.starts_with(ED25519_PREFIX) {
        return Err(XMatrixError::UnsupportedAlgorithm(x.key.clone()));
    }
    let signed = canonical_request(method, uri, &x.origin, own_name, content)?;
    verify_bytes(signed.as_bytes(), &x.sig, public_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    fn spec_key() -> SigningKey {
        SigningKey::from_seed_base64("ed25519:1", SPEC_SEED).unwrap()
    }

    #[test]
    fn spec_vectors() {
        let key = spec_key();
        assert_eq!(key.key_id(), "ed25519:1");
        assert_eq!(
            key.sign_json(&json!({})).unwrap(),
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        assert_eq!(
            key.sign_json(&json!({"one": 1, "two": "Two"})).unwrap(),
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn canonical_examples_from_spec() {
        let cases: Vec<(Value, String)> = vec![
            (json!({}), "{}".into()),
            (json!({"one": 1, "two": "Two"}), r#"{"one":1,"two":"Two"}"#.into()),
            (json!({"b": "2", "a": "1"}), r#"{"a":"1","b":"2"}"#.into()),
            (
                json!({"auth": {"success": true, "mxid": "@john.doe:example.com",
                    "profile": {"display_name": "John Doe", "three_pids": [
                        {"medium": "email", "address": "john.doe@example.org"},
                        {"medium": "msisdn", "address": "123456789"}]}}}),
                concat!(
                    r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","#,
                    r#""three_pids":[{"address":"john.doe@example.org","medium":"email"},"#,
                    r#"{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
                )
                .into(),
            ),
            (json!({"a": "日本語"}), r#"{"a":"日本語"}"#.into()),
            (json!({"本": 2, "日": 1}), r#"{"日":1,"本":2}"#.into()),
            (json!({"a": null, "": [true, false]}), r#"{"":[true,false],"a":null}"#.into()),
            (
                json!({"a": "\u{0}\u{1f}\u{8}\t\n\u{c}\r\"\\/\u{7f}\u{2028}"}),
                "{\"a\":\"\\u0000\\u001f\\b\\t\\n\\f\\r\\\"\\\\/\u{7f}\u{2028}\"}".into(),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(canonical_json(&value).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn canonical_numbers() {
        assert_eq!(
            canonical_json(&json!([9007199254740991i64])).unwrap(),
            "[9007199254740991]"
        );
        assert_eq!(
            canonical_json(&json!([-9007199254740991i64])).unwrap(),
            "[-9007199254740991]"
        );
        assert!(matches!(
            canonical_json(&json!([9007199254740992i64])),
            Err(CanonicalError::IntegerOutOfRange(_))
        ));
        assert!(matches!(
            canonical_json(&json!([-9007199254740992i64])),
            Err(CanonicalError::IntegerOutOfRange(_))
        ));
        assert!(matches!(
            canonical_json(&json!({"a": u64::MAX})),
            Err(CanonicalError::IntegerOutOfRange(_))
        ));
        assert!(matches!(
            canonical_json(&json!({"a": 1.5})),
            Err(CanonicalError::Float(_))
        ));
        assert!(matches!(
            canonical_json(&json!({"a": 1.0})),
            Err(CanonicalError::Float(_))
        ));
        // serde_json parses `-0` as the float -0.0, which canonical JSON cannot express.
        let neg_zero: Value = serde_json::from_str("-0").unwrap();
        assert!(matches!(
            canonical_json(&neg_zero),
            Err(CanonicalError::Float(_))
        ));
        let parsed: Value = serde_json::from_str("[0, -1, 1e2]").unwrap();
        assert!(matches!(
            canonical_json(&parsed),
            Err(CanonicalError::Float(_))
        ));
    }

    #[test]
    fn canonical_depth_limit() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 5) {
            v = Value::Array(vec![v]);
        }
        assert_eq!(canonical_json(&v), Err(CanonicalError::TooDeep));
        // Drop iteratively-ish: unwrap layers so the test does not rely on deep recursion.
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn signing_strips_signatures_and_unsigned() {
        let key = spec_key();
        let plain = key.sign_json(&json!({"one": 1, "two": "Two"})).unwrap();
        let decorated = json!({"one": 1, "two": "Two", "unsigned": {"age_ts": 5},
            "signatures": {"other": {"ed25519:x": "abc"}}});
        assert_eq!(key.sign_json(&decorated).unwrap(), plain);

        let mut doc = json!({"one": 1, "two": "Two", "unsigned": {"age_ts": 5}});
        key.sign_json_in_place(&mut doc, "domain").unwrap();
        assert_eq!(doc["signatures"]["domain"]["ed25519:1"], json!(plain));
        assert_eq!(doc["unsigned"], json!({"age_ts": 5}));
        verify_json(&doc, "domain", "ed25519:1", &key.public_key()).unwrap();
        doc["two"] = json!("three");
        assert_eq!(
            verify_json(&doc, "domain", "ed25519:1", &key.public_key()),
            Err(XMatrixError::BadSignature)
        );
        assert_eq!(
            verify_json(&doc, "nobody", "ed25519:1", &key.public_key()),
            Err(XMatrixError::MissingSignature)
        );
    }

    #[test]
    fn base64_gotchas() {
        // The spec's seed has non-zero trailing bits; strict decoders reject it.
        assert_eq!(decode_base64(SPEC_SEED).unwrap().len(), 32);
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YQ").unwrap(), b"a");
        assert_eq!(encode_base64(b"a"), "YQ");
        assert!(decode_base64("Y!").is_err());
    }

    #[test]
    fn keys() {
        let key = SigningKey::generate("abc").unwrap();
        assert_eq!(key.key_id(), "ed25519:abc");
        assert_eq!(key.version(), "abc");
        let again = SigningKey::from_seed("ed25519:abc", key.seed()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(
            public_key_from_base64(&key.public_base64()).unwrap(),
            key.public_key()
        );
        assert_ne!(
            SigningKey::generate("abc").unwrap().public_key(),
            key.public_key()
        );
        assert!(SigningKey::from_seed("", [0; 32]).is_err());
        assert!(SigningKey::from_seed("ed25519:", [0; 32]).is_err());
        assert!(SigningKey::from_seed("a\"b", [0; 32]).is_err());
        assert!(SigningKey::from_seed_base64("a", "AAAA").is_err());
        let line = format!("ed25519 a_XQZH {SPEC_SEED}");
        let from_file = SigningKey::from_synapse_key_line(&line).unwrap();
        assert_eq!(from_file.key_id(), "ed25519:a_XQZH");
        assert_eq!(from_file.public_key(), spec_key().public_key());
        assert!(SigningKey::from_synapse_key_line("ed25519 x").is_err());
        let debug = format!("{key:?}");
        assert!(debug.contains("ed25519:abc") && !debug.contains(&encode_base64(key.seed())));
    }

    const SYNAPSE_HEADER: &str = r#"X-Matrix origin="localhost:8481",key="ed25519:a_XQZH",sig="4N3rfvsBglwZXU4UTv0PFTH2ZK7AyvQwnrP5xTf/eTIEWwrNCSOsYPSMwR9wQgKO+KcOv/lhGjO/DyW94TYYDA",destination="localhost:8482""#;

    #[test]
    fn parses_synapse_header_and_prints_it_back() {
        let x = XMatrix::parse(SYNAPSE_HEADER.as_bytes()).unwrap();
        assert_eq!(x.origin, "localhost:8481");
        assert_eq!(x.destination.as_deref(), Some("localhost:8482"));
        assert_eq!(x.key, "ed25519:a_XQZH");
        assert!(x.sig.starts_with("4N3rfv"));
        assert_eq!(x.to_string(), SYNAPSE_HEADER);
        assert_eq!(SYNAPSE_HEADER.parse::<XMatrix>().unwrap(), x);
    }

    #[test]
    fn parse_variants() {
        let x = XMatrix::parse(
            b"x-matrix   ORIGIN = origin.hs.example.com:8448 ,\tKey=\"ed25519:key1\" , \
              unknown=\"x,y\", sig=\"ABC\\\"DEF\\\\G\", Destination=destination.hs.example.com",
        )
        .unwrap();
        assert_eq!(x.origin, "origin.hs.example.com:8448");
        assert_eq!(x.key, "ed25519:key1");
        assert_eq!(x.sig, "ABC\"DEF\\G");
        assert_eq!(x.destination.as_deref(), Some("destination.hs.example.com"));
        // Display escapes what parse unescapes.
        assert_eq!(XMatrix::parse(x.to_string().as_bytes()).unwrap(), x);

        let no_dest = XMatrix::parse(b"X-Matrix origin=a,key=ed25519:1,sig=Zm9v/+==").unwrap();
        assert_eq!(no_dest.destination, None);
        assert_eq!(no_dest.sig, "Zm9v/+==");
        assert_eq!(
            no_dest.to_string(),
            r#"X-Matrix origin="a",key="ed25519:1",sig="Zm9v/+==""#
        );
        let ipv6 = XMatrix::parse(b"X-Matrix origin=[::1]:8448,key=ed25519:1,sig=x,").unwrap();
        assert_eq!(ipv6.origin, "[::1]:8448");
    }

    #[test]
    fn malformed_headers_are_errors() {
        let bad: &[&[u8]] = &[
            b"",
            b"Bearer abc",
            b"X-Matrix",
            b"X-Matrixorigin=a,key=k,sig=s",
            b"X-Matrix origin=a,key=k",
            b"X-Matrix origin=a,sig=s",
            b"X-Matrix key=k,sig=s",
            b"X-Matrix origin=\"\",key=k,sig=s",
            b"X-Matrix origin=\"a,key=k,sig=s",
            b"X-Matrix origin=a key=k,sig=s",
            b"X-Matrix origin=a,key,sig=s",
            b"X-Matrix origin=a,key=,sig=s",
            b"X-Matrix =a,key=k,sig=s",
            b"X-Matrix origin=a,origin=b,key=k,sig=s",
            b"X-Matrix origin=\"a\\",
            b"X-Matrix origin=\"a\x01\",key=k,sig=s",
            b"X-Matrix origin=\"\xff\xfe\",key=k,sig=s",
            b"X-Matrix origin=a\x00,key=k,sig=s",
            b"X-Matrix origin=a,key=k,sig=s\"x\"",
        ];
        for header in bad {
            assert!(
                XMatrix::parse(header).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn parse_never_panics_on_prefixes() {
        let long = format!("{SYNAPSE_HEADER}, extra=\"a\\\"b\"");
        for end in 0..=long.len() {
            let _ = XMatrix::parse(&long.as_bytes()[..end]);
        }
        for b in 0..=255u8 {
            let mut h = b"X-Matrix origin=a,key=ed25519:1,sig=s".to_vec();
            h.insert(20, b);
            let _ = XMatrix::parse(&h);
        }
    }

    #[test]
    fn canonical_request_matches_the_object() {
        let bodies = [
            None,
            Some(json!({})),
            Some(json!({"z": [1, "\u{1}"], "a": {"y": null, "b": true}})),
        ];
        for content in &bodies {
            let direct = canonical_request(
                "PUT",
                "/_matrix/x/%21a?b=\"c\"",
                "o.example",
                "d.example:1",
                content.as_ref(),
            )
            .unwrap();
            let object = request_object(
                "PUT",
                "/_matrix/x/%21a?b=\"c\"",
                "o.example",
                "d.example:1",
                content.as_ref(),
            );
            assert_eq!(direct, canonical_json(&object).unwrap());
        }
        assert!(canonical_request("GET", "/", "o", "d", Some(&json!([1.5]))).is_err());
    }

    #[test]
    fn request_round_trip_and_tampering() {
        let key = SigningKey::generate("t1").unwrap();
        let pk = key.public_key();
        let uri = "/_matrix/federation/v1/send/1%21x?a=%40b";
        let body = json!({"origin": "a.example", "pdus": [], "origin_server_ts": 5});
        let x = sign_request(&key, "a.example", "b.example:8448", "PUT", uri, Some(&body)).unwrap();
        let parsed = XMatrix::parse(x.to_string().as_bytes()).unwrap();
        assert_eq!(parsed, x);
        verify_request(&parsed, "b.example:8448", "PUT", uri, Some(&body), &pk).unwrap();

        let ok = |r: Result<(), XMatrixError>| r.is_ok();
        assert!(!ok(verify_request(
            &x,
            "b.example:8448",
            "POST",
            uri,
            Some(&body),
            &pk
        )));
        assert!(!ok(verify_request(
            &x,
            "b.example:8448",
            "PUT",
            "/_matrix/federation/v1/send/1!x?a=@b",
            Some(&body),
            &pk
        )));
        assert!(!ok(verify_request(
            &x,
            "b.example:8448",
            "PUT",
            uri,
            None,
            &pk
        )));
        let changed = json!({"origin": "a.example", "pdus": [], "origin_server_ts": 6});
        assert_eq!(
            verify_request(&x, "b.example:8448", "PUT", uri, Some(&changed), &pk),
            Err(XMatrixError::BadSignature)
        );
        assert!(matches!(
            verify_request(&x, "c.example", "PUT", uri, Some(&body), &pk),
            Err(XMatrixError::DestinationMismatch { .. })
        ));
        let mut no_dest = x.clone();
        no_dest.destination = None;
        verify_request(&no_dest, "b.example:8448", "PUT", uri, Some(&body), &pk).unwrap();
        assert_eq!(
            verify_request(&no_dest, "c.example", "PUT", uri, Some(&body), &pk),
            Err(XMatrixError::BadSignature)
        );
        let other = SigningKey::generate("t1").unwrap();
        assert_eq!(
            verify_request(
                &x,
                "b.example:8448",
                "PUT",
                uri,
                Some(&body),
                &other.public_key()
            ),
            Err(XMatrixError::BadSignature)
        );
        let mut bad_sig = x.clone();
        bad_sig.sig = "not base64!".to_owned();
        assert_eq!(
            verify_request(&bad_sig, "b.example:8448", "PUT", uri, Some(&body), &pk),
            Err(XMatrixError::BadSignatureEncoding)
        );
        bad_sig.sig = encode_base64([0u8; 63]);
        assert_eq!(
            verify_request(&bad_sig, "b.example:8448", "PUT", uri, Some(&body), &pk),
            Err(XMatrixError::BadSignatureEncoding)
        );
        let mut other_alg = x.clone();
        other_alg.key = "curve25519:1".to_owned();
        assert!(matches!(
            verify_request(&other_alg, "b.example:8448", "PUT", uri, Some(&body), &pk),
            Err(XMatrixError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            sign_request(&key, "a", "b", "PUT", uri, Some(&json!({"f": 0.5}))),
            Err(CanonicalError::Float(_))
        ));
    }
}
