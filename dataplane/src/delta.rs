//! Applies a `SnapshotDelta` to the full snapshot it was computed against.
//!
//! The dataplane keeps the last full `opengslb.v1.Snapshot` of each stream;
//! a delta replaces zones, upserts and removes nodes by name, and replaces the
//! geo table and options only when present. The result is a full snapshot,
//! validated like any other before it is served and cached.

use std::collections::HashMap;

use opengslb_proto::{Snapshot, SnapshotDelta};

/// Why a delta cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDelta {
    /// The delta was computed against another generation.
    #[error("delta base generation does not match the snapshot held")]
    BaseMismatch,
    /// The delta does not move the generation forward.
    #[error("delta generation is not newer than its base")]
    NotNewer,
}

/// Returns the full snapshot `base` + `delta`.
pub fn apply(base: &Snapshot, delta: SnapshotDelta) -> Result<Snapshot, InvalidDelta> {
    check(base, &delta)?;
    apply_owned(base.clone(), delta)
}

fn check(base: &Snapshot, delta: &SnapshotDelta) -> Result<(), InvalidDelta> {
    if delta.base_generation != base.generation {
        return Err(InvalidDelta::BaseMismatch);
    }
    if delta.generation <= base.generation {
        return Err(InvalidDelta::NotNewer);
    }
    Ok(())
}

/// [`apply`] without the copy: `base` is consumed and becomes the result
/// (the stream client decodes its base from bytes for each delta, so it
/// never holds a decoded snapshot between updates).
pub fn apply_owned(base: Snapshot, delta: SnapshotDelta) -> Result<Snapshot, InvalidDelta> {
    apply_all(base, vec![delta])
}

/// `base` with `deltas` applied in order, as [`apply_owned`] one after the
/// other would give, but with one name index for all of them (a background
/// fold applies the deltas of many health changes at once).
pub fn apply_all(base: Snapshot, deltas: Vec<SnapshotDelta>) -> Result<Snapshot, InvalidDelta> {
    let mut next = base;
    let mut index: Option<HashMap<Vec<u8>, usize>> = None;
    for delta in deltas {
        check(&next, &delta)?;
        next.generation = delta.generation;
        for zone in delta.zones {
            match next.zones.iter_mut().find(|z| z.apex == zone.apex) {
                Some(slot) => *slot = zone,
                None => next.zones.push(zone),
            }
        }
        if !delta.upsert_nodes.is_empty() {
            let index = index.get_or_insert_with(|| {
                next.nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.name.clone(), i))
                    .collect()
            });
            for node in delta.upsert_nodes {
                match index.get(&node.name) {
                    Some(&i) => next.nodes[i] = node,
                    None => {
                        index.insert(node.name.clone(), next.nodes.len());
                        next.nodes.push(node);
                    }
                }
            }
        }
        if !delta.remove_nodes.is_empty() {
            next.nodes.retain(|n| !delta.remove_nodes.contains(&n.name));
            // Positions moved: rebuilt when next needed.
            index = None;
        }
        if let Some(geo) = delta.geo {
            next.geo = Some(geo);
        }
        if let Some(options) = delta.options {
            next.options = Some(options);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengslb_proto::{GeoTable, Node};

    fn node(name: &[u8], zone: u32) -> Node {
        Node {
            name: name.to_vec(),
            zone,
            ..Default::default()
        }
    }

    #[test]
    fn upsert_remove_and_geo() {
        let base = Snapshot {
            generation: 10,
            nodes: vec![node(b"\x01a\x00", 0), node(b"\x01b\x00", 0)],
            geo: Some(GeoTable {
                generation: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let delta = SnapshotDelta {
            base_generation: 10,
            generation: 11,
            upsert_nodes: vec![node(b"\x01b\x00", 1), node(b"\x01c\x00", 0)],
            remove_nodes: vec![b"\x01a\x00".to_vec()],
            ..Default::default()
        };
        let next = apply(&base, delta).unwrap();
        assert_eq!(next.generation, 11);
        let names: Vec<_> = next
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.zone))
            .collect();
        assert_eq!(
            names,
            vec![(b"\x01b\x00".to_vec(), 1), (b"\x01c\x00".to_vec(), 0)]
        );
        // Geo untouched when absent from the delta.
        assert_eq!(next.geo.unwrap().generation, 7);
    }

    /// Many deltas at once give what one after the other gives.
    #[test]
    fn apply_all_matches_one_by_one() {
        let base = Snapshot {
            generation: 1,
            nodes: (0..20u8).map(|i| node(&[1, b'a' + i, 0], 0)).collect(),
            ..Default::default()
        };
        let deltas: Vec<SnapshotDelta> = (1..=6u64)
            .map(|g| SnapshotDelta {
                base_generation: g,
                generation: g + 1,
                upsert_nodes: vec![
                    node(&[1, b'a' + g as u8, 0], g as u32),
                    node(&[2, b'x', b'0' + g as u8, 0], 0),
                ],
                remove_nodes: if g % 3 == 0 {
                    vec![vec![1, b'a' + (g as u8) * 2, 0]]
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .collect();
        let mut one_by_one = base.clone();
        for d in deltas.clone() {
            one_by_one = apply_owned(one_by_one, d).unwrap();
        }
        assert_eq!(apply_all(base.clone(), deltas.clone()).unwrap(), one_by_one);
        // A gap in the chain is refused.
        let mut broken = deltas;
        broken.remove(2);
        assert_eq!(apply_all(base, broken), Err(InvalidDelta::BaseMismatch));
    }

    #[test]
    fn rejects_wrong_base() {
        let base = Snapshot {
            generation: 10,
            ..Default::default()
        };
        let d = |b, g| SnapshotDelta {
            base_generation: b,
            generation: g,
            ..Default::default()
        };
        assert_eq!(apply(&base, d(9, 11)), Err(InvalidDelta::BaseMismatch));
        assert_eq!(apply(&base, d(10, 10)), Err(InvalidDelta::NotNewer));
        assert_eq!(
            apply_owned(base.clone(), d(9, 11)),
            Err(InvalidDelta::BaseMismatch)
        );
        assert_eq!(apply_owned(base, d(10, 12)).unwrap().generation, 12);
    }
}
