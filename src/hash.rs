//! Keyed hashing for the maps on the per-message path whose keys come from a client or from
//! pgtenant's own statement names: foldhash (a few instructions per short key, where std's
//! SipHash-1-3 costs ~290 per Bind) with seeds drawn from `rand` once, so the layout of a map
//! stays unpredictable. foldhash is not HashDoS-resistant the way SipHash is; the keys a
//! client chooses go into that client's own maps only, so colliding them slows that client
//! alone, and the random seeds keep even that from being planned offline.

use std::sync::OnceLock;

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;

/// The hasher state of one map (a fresh per-map seed, the process's random shared seed).
pub type KeyedState = SeedableRandomState;

/// A map with [`KeyedState`] hashing.
pub type KeyedMap<K, V> = std::collections::HashMap<K, V, KeyedState>;

/// A hasher state with random seeds, for one map.
pub fn keyed() -> KeyedState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(rand::random()));
    SeedableRandomState::with_seed(rand::random(), shared)
}

/// An empty [`KeyedMap`].
pub fn map<K, V>() -> KeyedMap<K, V> {
    KeyedMap::with_hasher(keyed())
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn maps_are_seeded_apart() {
        let (a, b) = (keyed(), keyed());
        let key: &[u8] = b"s1";
        assert_eq!(a.hash_one(key), a.hash_one(key), "one map hashes a key the same each time");
        assert_ne!(a.hash_one(key), b.hash_one(key), "two maps hash it apart (random per-map seeds)");
        let mut m = map::<Box<[u8]>, u32>();
        m.insert(b"s1".to_vec().into(), 1);
        assert_eq!(m.get(key), Some(&1));
    }
}
