//! Where shards live (issue 25, docs/cluster.md "Shards"): the placement
//! rules a cluster's metadata group applies to its shard map. Pure
//! functions of the map and the nodes; the group decides, through its log,
//! and the nodes carry the moves out.
//!
//! The rules: each shard has `replicas` replicas on as many distinct nodes;
//! replicas are spread so that no node holds more than one more than
//! another; so are leaderships; a shard moves one replica at a time (a
//! learner added on the new node catches up, is promoted, and the old
//! replica is removed), and a move is planned only when it narrows the
//! spread.

use std::collections::BTreeMap;
use std::ops::Range;

pub type NodeId = u64;
pub type ShardId = u32;

/// The slots request ids hash into; each shard owns a range of them (a
/// split later halves a range, and no event is hashed again).
pub const SLOTS: u16 = 4096;

/// The slot of a request id: its XXH3 (128-bit) modulo [`SLOTS`].
pub fn slot_of(request_id: &str) -> u16 {
    let slot = twox_hash::XxHash3_128::oneshot(request_id.as_bytes()) % u128::from(SLOTS);
    u16::try_from(slot).unwrap_or(0)
}

/// One shard's slots, replicas and move under way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub slots: Range<u16>,
    pub replicas: Vec<NodeId>,
    pub moving: Option<Move>,
}

/// The shard that owns `slot`.
pub fn shard_of(map: &BTreeMap<ShardId, Placement>, slot: u16) -> Option<ShardId> {
    (map.iter())
        .find(|(_, p)| p.slots.contains(&slot))
        .map(|(s, _)| *s)
}

/// `items` by the shard their request id's slot belongs to, each shard's in
/// their order; an item whose slot no shard owns is left out (a map always
/// covers every slot).
pub fn split<T>(
    map: &BTreeMap<ShardId, Placement>,
    items: Vec<T>,
    request_id: impl Fn(&T) -> &str,
) -> BTreeMap<ShardId, Vec<T>> {
    let mut parts: BTreeMap<ShardId, Vec<T>> = BTreeMap::new();
    for item in items {
        if let Some(s) = shard_of(map, slot_of(request_id(&item))) {
            parts.entry(s).or_default().push(item);
        }
    }
    parts
}

/// A replica moving from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub from: NodeId,
    pub to: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{replicas} replicas need as many nodes; there are {nodes}")]
    TooFewNodes { replicas: usize, nodes: usize },
    #[error("a cluster needs at least one shard")]
    NoShards,
    #[error("at most {SLOTS} shards")]
    TooManyShards,
}

/// The first placement of `shards` shards over `nodes`: replicas round
/// the nodes in turn, each shard's leader on another node than the last's.
pub fn initial(
    nodes: &[NodeId],
    shards: ShardId,
    replicas: usize,
) -> Result<BTreeMap<ShardId, Placement>, PlacementError> {
    if shards == 0 {
        return Err(PlacementError::NoShards);
    }
    if nodes.len() < replicas || replicas == 0 {
        return Err(PlacementError::TooFewNodes {
            replicas,
            nodes: nodes.len(),
        });
    }
    if shards > u32::from(SLOTS) {
        return Err(PlacementError::TooManyShards);
    }
    let bound = |s: u32| u16::try_from(s * u32::from(SLOTS) / shards).unwrap_or(SLOTS);
    let n = nodes.len();
    Ok((0..shards)
        .map(|s| {
            let first = s as usize * replicas;
            let replicas = (0..replicas).map(|r| nodes[(first + r) % n]).collect();
            (
                s,
                Placement {
                    slots: bound(s)..bound(s + 1),
                    replicas,
                    moving: None,
                },
            )
        })
        .collect())
}

/// Replicas per node (every node of `nodes` listed, with 0 if it holds none).
pub fn replica_counts(
    map: &BTreeMap<ShardId, Placement>,
    nodes: &[NodeId],
) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for p in map.values() {
        for r in &p.replicas {
            *counts.entry(*r).or_default() += 1;
        }
    }
    counts
}

/// The moves to start now, at most `limit` and one per shard not already
/// moving: replicas leave nodes that are gone first, then the fullest live
/// node for the emptiest, while that narrows the spread.
pub fn moves(
    map: &BTreeMap<ShardId, Placement>,
    nodes: &[NodeId],
    limit: usize,
) -> Vec<(ShardId, Move)> {
    let mut counts = replica_counts(map, nodes);
    // Moves under way count where they will end.
    for p in map.values() {
        if let Some(m) = p.moving {
            *counts.entry(m.to).or_default() += 1;
            if let Some(c) = counts.get_mut(&m.from) {
                *c -= 1;
            }
        }
    }
    let live = |n: &NodeId| nodes.contains(n);
    let mut planned: Vec<(ShardId, Move)> = Vec::new();
    let free = |s: &ShardId, planned: &[(ShardId, Move)]| {
        map[s].moving.is_none() && !planned.iter().any(|(p, _)| p == s)
    };
    while planned.len() < limit {
        // The emptiest live node that a shard could take.
        let mut targets: Vec<(usize, NodeId)> = nodes.iter().map(|n| (counts[n], *n)).collect();
        targets.sort_unstable();
        let gone: Option<(ShardId, NodeId)> = map
            .iter()
            .filter(|(s, _)| free(s, &planned))
            .find_map(|(s, p)| p.replicas.iter().find(|r| !live(r)).map(|r| (*s, *r)));
        let pick = match gone {
            Some((s, from)) => targets
                .iter()
                .find(|(_, to)| !map[&s].replicas.contains(to))
                .map(|(_, to)| (s, Move { from, to: *to })),
            None => {
                let Some(&(low, to)) = targets.first() else {
                    break;
                };
                // The fullest node with a shard the emptiest lacks.
                let mut sources: Vec<(usize, NodeId)> = (counts.iter())
                    .filter(|(n, c)| live(n) && **c > low + 1)
                    .map(|(n, c)| (*c, *n))
                    .collect();
                sources.sort_unstable_by(|a, b| b.cmp(a));
                sources.iter().find_map(|(_, from)| {
                    map.iter()
                        .filter(|(s, _)| free(s, &planned))
                        .find(|(_, p)| p.replicas.contains(from) && !p.replicas.contains(&to))
                        .map(|(s, _)| (*s, Move { from: *from, to }))
                })
            }
        };
        let Some((s, m)) = pick else {
            break;
        };
        if let Some(c) = counts.get_mut(&m.from) {
            *c -= 1;
        }
        *counts.entry(m.to).or_default() += 1;
        planned.push((s, m));
    }
    planned
}

/// A move carried out: the replica is on its new node and off its old one.
pub fn finish(p: &mut Placement) {
    if let Some(m) = p.moving.take() {
        for r in &mut p.replicas {
            if *r == m.from {
                *r = m.to;
            }
        }
    }
}

/// Where each shard's leader should be so that every node leads about as
/// many as another (within one, where the replicas allow it): each shard
/// first on the replica that leads fewest so far, then leaderships handed
/// along chains of shards, from a node that leads two more than another
/// towards it, while there is such a chain.
pub fn leaders(map: &BTreeMap<ShardId, Placement>) -> BTreeMap<ShardId, NodeId> {
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut out: BTreeMap<ShardId, NodeId> = BTreeMap::new();
    for (s, p) in map {
        let Some(leader) = (p.replicas.iter()).min_by_key(|r| led.get(*r).copied().unwrap_or(0))
        else {
            continue;
        };
        *led.entry(*leader).or_default() += 1;
        out.insert(*s, *leader);
    }
    for p in map.values() {
        for r in &p.replicas {
            led.entry(*r).or_default();
        }
    }
    while let Some(path) = relief(map, &out, &led) {
        // Each shard on the path moves to the next node: the first node
        // leads one fewer, the last one more.
        for (s, to) in path {
            let from = out[&s];
            *led.entry(from).or_default() -= 1;
            *led.entry(to).or_default() += 1;
            out.insert(s, to);
        }
    }
    out
}

/// A chain of leaderships to hand over, (shard, its new leader) each, from
/// the node that leads most to one that leads at least two fewer; `None`
/// when no chain of replicas joins them.
fn relief(
    map: &BTreeMap<ShardId, Placement>,
    out: &BTreeMap<ShardId, NodeId>,
    led: &BTreeMap<NodeId, usize>,
) -> Option<Vec<(ShardId, NodeId)>> {
    let most = *led.values().max()?;
    (led.iter())
        .filter(|(_, c)| **c == most)
        .find_map(|(top, _)| relief_from(*top, most, map, out, led))
}

/// [`relief`] from the node `top`, which leads `most`.
fn relief_from(
    top: NodeId,
    most: usize,
    map: &BTreeMap<ShardId, Placement>,
    out: &BTreeMap<ShardId, NodeId>,
    led: &BTreeMap<NodeId, usize>,
) -> Option<Vec<(ShardId, NodeId)>> {
    // Breadth first from `top`: a node reached by handing it a shard.
    let mut came: BTreeMap<NodeId, (ShardId, NodeId)> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([top]);
    while let Some(at) = queue.pop_front() {
        for (s, p) in map.iter().filter(|(s, _)| out.get(*s) == Some(&at)) {
            for &next in &p.replicas {
                if next == top || came.contains_key(&next) {
                    continue;
                }
                came.insert(next, (*s, at));
                if led[&next] + 2 <= most {
                    let mut path = Vec::new();
                    let mut node = next;
                    while node != top {
                        let (shard, prev) = came[&node];
                        path.push((shard, node));
                        node = prev;
                    }
                    return Some(path);
                }
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn spread(counts: impl Iterator<Item = usize>) -> usize {
        let counts: Vec<usize> = counts.collect();
        counts.iter().max().unwrap() - counts.iter().min().unwrap()
    }

    fn check_replicas(map: &BTreeMap<ShardId, Placement>, replicas: usize) {
        for (s, p) in map {
            let distinct: BTreeSet<_> = p.replicas.iter().collect();
            assert_eq!(distinct.len(), replicas, "shard {s}: {:?}", p.replicas);
        }
    }

    /// Plans and carries out moves until none are left: how many there were.
    fn settle(map: &mut BTreeMap<ShardId, Placement>, nodes: &[NodeId], replicas: usize) -> usize {
        let mut done = 0;
        for _ in 0..10_000 {
            let planned = moves(map, nodes, 3);
            if planned.is_empty() {
                return done;
            }
            let shards: BTreeSet<_> = planned.iter().map(|(s, _)| s).collect();
            assert_eq!(shards.len(), planned.len(), "two moves of one shard");
            for (s, m) in planned {
                let p = map.get_mut(&s).unwrap();
                assert!(p.replicas.contains(&m.from) && !p.replicas.contains(&m.to));
                p.moving = Some(m);
                finish(p);
                done += 1;
            }
            check_replicas(map, replicas);
        }
        panic!("moves never settle");
    }

    #[test]
    fn a_first_placement_is_spread_and_refuses_too_few_nodes() {
        let map = initial(&[1, 2, 3], 4, 3).unwrap();
        check_replicas(&map, 3);
        assert_eq!(spread(replica_counts(&map, &[1, 2, 3]).into_values()), 0);
        let led = leaders(&map);
        let mut per: BTreeMap<NodeId, usize> = BTreeMap::new();
        for n in led.values() {
            *per.entry(*n).or_default() += 1;
        }
        assert_eq!(per.len(), 3, "every node leads some: {led:?}");
        assert_eq!(
            initial(&[1, 2], 4, 3),
            Err(PlacementError::TooFewNodes {
                replicas: 3,
                nodes: 2
            })
        );
        assert_eq!(initial(&[1, 2, 3], 0, 3), Err(PlacementError::NoShards));
    }

    #[test]
    fn every_slot_has_one_shard_and_skewed_ids_spread_evenly() {
        for shards in [1, 3, 4, 7, 4096] {
            let map = initial(&[1, 2, 3], shards, 3).unwrap();
            let owners: Vec<ShardId> = (0..SLOTS).map(|s| shard_of(&map, s).unwrap()).collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]), "ranges in order");
            let sizes: Vec<usize> = map.values().map(|p| p.slots.len()).collect();
            assert!(spread(sizes.into_iter()) <= 1);
        }
        assert_eq!(
            initial(&[1, 2, 3], 4097, 3),
            Err(PlacementError::TooManyShards)
        );
        // The most skewed traffic there is for any key but the id: one
        // endpoint, one user, ids counting up. Each of 4 shards gets its
        // quarter within 2%.
        let map = initial(&[1, 2, 3], 4, 3).unwrap();
        let ids: Vec<String> = (0..100_000).map(|i| format!("req-{i}")).collect();
        let parts = split(&map, ids, String::as_str);
        let number = |id: &String| id[4..].parse::<u32>().unwrap();
        for (s, part) in &parts {
            let share = part.len() as f64 / 100_000.0;
            assert!((share - 0.25).abs() < 0.005, "shard {s}: {share}");
            // Each part keeps the batch's order.
            assert!(part.windows(2).all(|w| number(&w[0]) < number(&w[1])));
        }
        assert_eq!(parts.values().map(Vec::len).sum::<usize>(), 100_000);
    }

    #[test]
    fn a_fourth_node_takes_its_share_by_the_fewest_moves() {
        let mut map = initial(&[1, 2, 3], 4, 3).unwrap();
        let nodes = [1, 2, 3, 4];
        let done = settle(&mut map, &nodes, 3);
        // 12 replicas over 4 nodes: 3 each, so exactly 3 move onto node 4.
        assert_eq!(done, 3);
        assert!(replica_counts(&map, &nodes).values().all(|c| *c == 3));
    }

    #[test]
    fn a_node_gone_has_only_its_replicas_moved_and_a_moving_shard_waits() {
        let mut map = initial(&[1, 2, 3, 4], 4, 3).unwrap();
        let held_by_4 = replica_counts(&map, &[1, 2, 3, 4])[&4];
        let planned = moves(&map, &[1, 2, 3], 10);
        assert_eq!(planned.len(), held_by_4);
        assert!(planned.iter().all(|(_, m)| m.from == 4));
        // One move under way: that shard gets no other.
        let (s, m) = planned[0];
        map.get_mut(&s).unwrap().moving = Some(m);
        let next = moves(&map, &[1, 2, 3], 10);
        assert!(next.iter().all(|(t, _)| *t != s), "{next:?}");
        assert_eq!(next.len(), held_by_4 - 1);
        assert_eq!(settle(&mut map, &[1, 2, 3], 3), held_by_4 - 1);
        finish(map.get_mut(&s).unwrap());
        let counts = replica_counts(&map, &[1, 2, 3]);
        assert_eq!(counts.get(&4), None, "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 12);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn moves_settle_balanced_after_nodes_come_and_go(
            first in 3usize..9, shards in 1u32..40, added in 0usize..5, removed in 0usize..3,
        ) {
            let replicas = 3;
            let start: Vec<NodeId> = (1..=first as u64).collect();
            let mut map = initial(&start, shards, replicas).unwrap();
            let mut nodes = start.clone();
            nodes.extend((0..added as u64).map(|i| 100 + i));
            let removed = removed.min(nodes.len() - replicas);
            nodes.drain(..removed);
            settle(&mut map, &nodes, replicas);
            let counts = replica_counts(&map, &nodes);
            // Every replica on a live node, spread within one.
            prop_assert_eq!(counts.len(), nodes.len(), "{:?}", counts);
            prop_assert!(spread(counts.values().copied()) <= 1, "{:?}", counts);
            let led = leaders(&map);
            let mut per: BTreeMap<NodeId, usize> = BTreeMap::new();
            for n in led.values() {
                *per.entry(*n).or_default() += 1;
            }
            // Leaders spread within one among the nodes that lead, and
            // every node leads some when there are as many shards.
            prop_assert!(spread(per.values().copied()) <= 1, "{:?}", per);
            if shards as usize >= nodes.len() {
                prop_assert_eq!(per.len(), nodes.len());
            }
        }
    }
}
