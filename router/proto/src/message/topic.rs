//! Topic access control, as the reference's `message/topic.rs`: a default action for topics
//! without configuration (accept unless changed) and, per configured topic, a whitelist of
//! source subnets. A configured topic with an empty whitelist accepts nobody.
//!
//! The check runs on INIT packets that are not replies to a message of ours. A source's
//! address is derived from its public key ([`PublicKey::address`]), so a whitelisted `/64`
//! admits exactly the node that owns it.

use std::collections::HashMap;
use std::net::IpAddr;

use hyphae_wire::Subnet;
use hyphae_wire::identity::PublicKey;

/// The topic ACL.
#[derive(Debug, Clone)]
pub struct TopicAcl {
    default_accept: bool,
    whitelist: HashMap<Vec<u8>, Vec<Subnet>>,
}

impl Default for TopicAcl {
    fn default() -> Self {
        Self {
            default_accept: true,
            whitelist: HashMap::new(),
        }
    }
}

impl TopicAcl {
    /// Whether messages on unconfigured topics are accepted (default `true`).
    pub fn default_accept(&self) -> bool {
        self.default_accept
    }

    /// Sets the action for unconfigured topics.
    pub fn set_default_accept(&mut self, accept: bool) {
        self.default_accept = accept;
    }

    /// The configured topics.
    pub fn topics(&self) -> impl Iterator<Item = &[u8]> {
        self.whitelist.keys().map(Vec::as_slice)
    }

    /// Configures a topic with an empty whitelist (if it is not configured yet).
    pub fn add_topic(&mut self, topic: &[u8]) {
        self.whitelist.entry(topic.to_vec()).or_default();
    }

    /// Removes a topic's configuration; it falls back to the default action.
    pub fn remove_topic(&mut self, topic: &[u8]) {
        self.whitelist.remove(topic);
    }

    /// The whitelisted sources of a configured topic.
    pub fn sources(&self, topic: &[u8]) -> Option<&[Subnet]> {
        self.whitelist.get(topic).map(Vec::as_slice)
    }

    /// Whitelists a source subnet for a topic, configuring the topic if needed.
    pub fn add_source(&mut self, topic: &[u8], subnet: Subnet) {
        let list = self.whitelist.entry(topic.to_vec()).or_default();
        if !list.contains(&subnet) {
            list.push(subnet);
        }
    }

    /// Removes a whitelisted source; the topic stays configured (and may end up empty).
    pub fn remove_source(&mut self, topic: &[u8], subnet: &Subnet) {
        if let Some(list) = self.whitelist.get_mut(topic) {
            list.retain(|s| s != subnet);
        }
    }

    /// Whether `src` may send a (non-reply) message on `topic`.
    pub fn allows(&self, topic: &[u8], src: &PublicKey) -> bool {
        match self.whitelist.get(topic) {
            Some(list) => {
                let ip = IpAddr::V6(src.address());
                list.iter().any(|s| s.contains_ip(ip))
            }
            None => self.default_accept,
        }
    }
}
