//! The hasher of the gateway's fixed lookup tables: resource names, part names and services
//! (the route table) and method paths (the metrics' method table), each looked up on every call
//! with a key of 5-50 bytes.
//!
//! std's SipHash and byte-wise FNV are several times slower for such a key; this hashes 8
//! bytes per multiply (the FxHash step). SipHash's
//! protection against chosen collisions is not needed here: the tables are built from the
//! configuration and never grow from what clients send, so a client key crafted to collide only
//! slows its own lookup by a few comparisons.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map with [`TableHasher`].
pub type TableMap<K, V> = HashMap<K, V, BuildHasherDefault<TableHasher>>;

/// FxHash's multiplier (a 64-bit odd constant with well-mixed bits).
const K: u64 = 0x517c_c1b7_2722_0a95;

/// See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct TableHasher(u64);

impl TableHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for TableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves its best bits at the top; hashbrown picks buckets by the low bits.
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    fn hash(s: &str) -> u64 {
        BuildHasherDefault::<TableHasher>::default().hash_one(s)
    }

    #[test]
    fn tells_close_keys_apart() {
        let keys = [
            "",
            "a",
            "a\0",
            "b",
            "motor1",
            "motor2",
            "1motor",
            "sub-part:motor1",
            "sub-part:motor2",
            "viam.component.motor.v1.MotorService",
            "viam.component.motor.v1.MotorServicf",
            "12345678",
            "123456789",
            "1234567\0",
        ];
        let mut seen = std::collections::HashSet::new();
        for k in keys {
            assert!(seen.insert(hash(k)), "{k:?} collides");
        }
        // The low bits (bucket index) differ too for keys that differ only at their end.
        let low = |s: &str| hash(s) & 0xff;
        let distinct: std::collections::HashSet<_> =
            (0..64).map(|i| low(&format!("motor{i}"))).collect();
        assert!(
            distinct.len() > 40,
            "{} distinct low bytes of 64",
            distinct.len()
        );
    }

    #[test]
    fn a_table_map_finds_its_keys() {
        let mut map: TableMap<String, usize> = TableMap::default();
        for i in 0..1000 {
            map.insert(format!("part{i}:motor{i}"), i);
        }
        for i in 0..1000 {
            assert_eq!(map.get(format!("part{i}:motor{i}").as_str()), Some(&i));
        }
        assert_eq!(map.get("part1000:motor1000"), None);
    }
}
