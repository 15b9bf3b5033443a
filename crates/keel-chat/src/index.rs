//! The node-local channel index: for each channel (folded name), the members connected to
//! *this* node. A channel message is checked once against the engine (permission only) and
//! published once to every node; each node delivers it from its own index, so no call returns
//! the channel's member list per message.
//!
//! The node keeps the index right for its own clients: JOIN adds, PART removes, KICK removes
//! (a remote kicker sends the target's node an [`crate::cluster::Envelope::Part`]), departure
//! removes every entry of the client, and after the store comes back the index is rebuilt
//! from it ([`ChannelIndex::set_client`]) so that state lost or changed while it was away does
//! not linger. Members on other nodes are never in it: their own node delivers to them.

use std::collections::{HashMap, HashSet};

use crate::engine::ClientId;

/// Channel → local member ids, and the reverse.
#[derive(Debug, Default)]
pub struct ChannelIndex {
    members: HashMap<String, HashSet<ClientId>>,
    channels: HashMap<ClientId, HashSet<String>>,
}

impl ChannelIndex {
    /// Records `id` as a member of `channel` (folded); false when it already was.
    pub fn join(&mut self, channel: &str, id: ClientId) -> bool {
        let added = self
            .members
            .entry(channel.to_owned())
            .or_default()
            .insert(id);
        self.channels
            .entry(id)
            .or_default()
            .insert(channel.to_owned());
        added
    }

    /// Removes `id` from `channel`; false when it was not a member.
    pub fn part(&mut self, channel: &str, id: ClientId) -> bool {
        let removed = match self.members.get_mut(channel) {
            Some(set) => {
                let removed = set.remove(&id);
                if set.is_empty() {
                    self.members.remove(channel);
                }
                removed
            }
            None => false,
        };
        if let Some(chans) = self.channels.get_mut(&id) {
            chans.remove(channel);
            if chans.is_empty() {
                self.channels.remove(&id);
            }
        }
        removed
    }

    /// Removes `id` from every channel; returns how many it was in.
    pub fn remove_client(&mut self, id: ClientId) -> usize {
        let Some(chans) = self.channels.remove(&id) else {
            return 0;
        };
        for c in &chans {
            if let Some(set) = self.members.get_mut(c) {
                set.remove(&id);
                if set.is_empty() {
                    self.members.remove(c);
                }
            }
        }
        chans.len()
    }

    /// Replaces the channels of `id` with `channels` (folded): the resync after the store
    /// comes back.
    pub fn set_client(&mut self, id: ClientId, channels: &[String]) {
        self.remove_client(id);
        for c in channels {
            self.join(c, id);
        }
    }

    /// Local members of `channel`.
    pub fn members(&self, channel: &str) -> impl Iterator<Item = ClientId> + '_ {
        self.members.get(channel).into_iter().flatten().copied()
    }

    /// Number of local members of `channel`.
    pub fn count(&self, channel: &str) -> usize {
        self.members.get(channel).map_or(0, HashSet::len)
    }

    /// Channels `id` is in, sorted.
    pub fn channels_of(&self, id: ClientId) -> Vec<String> {
        let mut v: Vec<String> = self
            .channels
            .get(&id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Channels with at least one local member.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True with no local member in any channel.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(it: impl Iterator<Item = ClientId>) -> Vec<ClientId> {
        let mut v: Vec<_> = it.collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn join_part_and_departure_keep_both_directions() {
        let mut ix = ChannelIndex::default();
        assert!(ix.join("#a", 1));
        assert!(!ix.join("#a", 1), "joining twice adds nothing");
        assert!(ix.join("#a", 2));
        assert!(ix.join("#b", 1));
        assert_eq!(sorted(ix.members("#a")), vec![1, 2]);
        assert_eq!(ix.channels_of(1), vec!["#a".to_owned(), "#b".to_owned()]);
        assert!(ix.part("#a", 1));
        assert!(!ix.part("#a", 1), "parting twice removes nothing");
        assert!(!ix.part("#nowhere", 1));
        assert_eq!(sorted(ix.members("#a")), vec![2]);
        assert_eq!(ix.channels_of(1), vec!["#b".to_owned()]);
        assert_eq!(ix.remove_client(1), 1);
        assert_eq!(ix.remove_client(1), 0);
        assert_eq!(ix.count("#b"), 0);
        assert_eq!(ix.len(), 1, "#b went away with its last local member");
        assert_eq!(ix.remove_client(2), 1);
        assert!(ix.is_empty());
        assert!(ix.channels.is_empty(), "no reverse entry left behind");
    }

    #[test]
    fn resync_replaces_a_clients_channels() {
        let mut ix = ChannelIndex::default();
        ix.join("#old", 7);
        ix.join("#kept", 7);
        ix.join("#kept", 8);
        ix.set_client(7, &["#kept".to_owned(), "#new".to_owned()]);
        assert_eq!(
            ix.channels_of(7),
            vec!["#kept".to_owned(), "#new".to_owned()]
        );
        assert_eq!(ix.count("#old"), 0);
        assert_eq!(sorted(ix.members("#kept")), vec![7, 8]);
        ix.set_client(7, &[]);
        assert!(ix.channels_of(7).is_empty());
        assert_eq!(sorted(ix.members("#kept")), vec![8]);
        assert_eq!(ix.len(), 1);
    }

    proptest::proptest! {
        /// After any sequence of operations, the index equals a plain model of memberships.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..4, 0u64..5, 0usize..3), 0..200)) {
            let chans = ["#a", "#b", "#c"];
            let mut ix = ChannelIndex::default();
            let mut model: HashSet<(usize, ClientId)> = HashSet::new();
            for (op, id, c) in ops {
                match op {
                    0 => { ix.join(chans[c], id); model.insert((c, id)); }
                    1 => { ix.part(chans[c], id); model.remove(&(c, id)); }
                    2 => { ix.remove_client(id); model.retain(|(_, i)| *i != id); }
                    _ => {
                        let keep: Vec<String> = chans.iter().enumerate()
                            .filter(|(j, _)| (j + c) % 2 == 0).map(|(_, n)| (*n).to_owned()).collect();
                        ix.set_client(id, &keep);
                        model.retain(|(_, i)| *i != id);
                        for (j, _) in chans.iter().enumerate().filter(|(j, _)| (j + c) % 2 == 0) {
                            model.insert((j, id));
                        }
                    }
                }
            }
            for (j, name) in chans.iter().enumerate() {
                let want: Vec<ClientId> = {
                    let mut v: Vec<_> = model.iter().filter(|(c, _)| *c == j).map(|(_, i)| *i).collect();
                    v.sort_unstable();
                    v
                };
                proptest::prop_assert_eq!(sorted(ix.members(name)), want);
            }
            for id in 0..5 {
                let want: Vec<String> = {
                    let mut v: Vec<String> = model.iter().filter(|(_, i)| *i == id).map(|(c, _)| chans[*c].to_owned()).collect();
                    v.sort();
                    v
                };
                proptest::prop_assert_eq!(ix.channels_of(id), want);
            }
        }
    }
}
