//! HPACK (RFC 7541): the header block decoder and encoder.
//!
//! Decoder: raw strings are handed out as zero-copy slices of the block, static entries as
//! static `Bytes`, dynamic entries as `Bytes` clones (a reference count). Huffman strings are
//! decoded into fresh `Bytes` by a table-driven decoder (`huffman.rs`). An entry is copied once
//! when inserted into the dynamic table, so the table never pins a whole read buffer.
//!
//! Encoder: strings are written raw (no Huffman): cheaper, RFC-legal, and a gRPC connection's
//! repeated fields are indexed after their first use anyway. A gateway sends nearly the same
//! fields call after call, so a field seen before is found through a small direct-mapped cache
//! (field hash -> static index or dynamic entry), checked against the table's bytes before use.
//! Otherwise: static names through a small hash table built at compile time, the dynamic table
//! (at most 4096 bytes, a few dozen entries) scanned comparing a name hash first.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::huffman;

/// A malformed header block: a connection error COMPRESSION_ERROR, except `ListTooLarge`
/// (the block was decoded, the table is in sync: refuse just the stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// An integer longer than 32 bits.
    #[error("HPACK integer overflow")]
    IntegerOverflow,
    /// An index beyond the static and dynamic tables (or 0).
    #[error("HPACK index {0} out of range")]
    IndexOutOfRange(usize),
    /// A Huffman string containing EOS, or padded with more than 7 bits or with zeros.
    #[error("invalid Huffman-coded string")]
    InvalidHuffman,
    /// The block ends inside a representation.
    #[error("truncated header block")]
    Truncated,
    /// A dynamic table size update after the first field of the block.
    #[error("dynamic table size update after a header field")]
    SizeUpdateNotAtStart,
    /// A dynamic table size update above our SETTINGS_HEADER_TABLE_SIZE.
    #[error("dynamic table size update to {size} above the limit {limit}")]
    SizeUpdateTooLarge {
        /// The size asked for.
        size: usize,
        /// Our advertised limit.
        limit: usize,
    },
    /// The decoded header list is larger than the limit (RFC 9113 section 6.5.2 size).
    #[error("header list larger than {0} bytes")]
    ListTooLarge(usize),
    /// The decoded header list is more than [`BOMB_FACTOR`] times the limit: an HPACK bomb
    /// (a large table entry referenced over and over). Decoding stopped there, so the table is
    /// out of step with the peer's: the connection must end.
    #[error("header list over {0} bytes: an HPACK bomb")]
    Bomb(usize),
}

/// A header list this many times over the limit is a [`HpackError::Bomb`], not a mistake.
pub const BOMB_FACTOR: usize = 16;

/// RFC 7541 Appendix A.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Index of the first dynamic table entry.
const DYNAMIC_BASE: usize = STATIC.len() + 1;

/// RFC 7541 section 4.1: an entry's size counts 32 bytes of overhead.
const ENTRY_OVERHEAD: usize = 32;

/// The dynamic table size every peer starts with, and the most the encoder uses.
const DEFAULT_TABLE_SIZE: usize = 4096;

/// Integers above this are errors (lengths and indexes never come close).
const MAX_INT: u64 = u32::MAX as u64;

/// Reads an integer with an `prefix`-bit prefix (RFC 7541 section 5.1) at `*pos`.
fn read_int(buf: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let mask = (1u8 << prefix) - 1;
    let Some(&first) = buf.get(*pos) else {
        return Err(HpackError::Truncated);
    };
    *pos += 1;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(value as usize);
    }
    let mut shift = 0;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(HpackError::Truncated);
        };
        *pos += 1;
        value += u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
    if value > MAX_INT {
        return Err(HpackError::IntegerOverflow);
    }
    Ok(value as usize)
}

/// The span of a string literal (RFC 7541 section 5.2) at `*pos`: (Huffman-coded, start, end).
fn string_span(block: &[u8], pos: &mut usize) -> Result<(bool, usize, usize), HpackError> {
    let Some(&first) = block.get(*pos) else {
        return Err(HpackError::Truncated);
    };
    let len = read_int(block, pos, 7)?;
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= block.len())
        .ok_or(HpackError::Truncated)?;
    *pos = end;
    Ok((first & 0x80 != 0, start, end))
}

fn decode_huffman(code: &[u8]) -> Result<Bytes, HpackError> {
    let mut out = Vec::new();
    huffman::decode(code, &mut out)?;
    Ok(Bytes::from(out))
}

/// Reads a string literal (RFC 7541 section 5.2) at `*pos`.
fn read_string(block: &Bytes, pos: &mut usize) -> Result<Bytes, HpackError> {
    let (huffman, start, end) = string_span(block, pos)?;
    if huffman {
        decode_huffman(&block[start..end])
    } else {
        Ok(block.slice(start..end))
    }
}

/// Slots of the decoder's cache of Huffman-coded values (a power of two).
const HUFFMAN_SLOTS: usize = 8;

/// Longer Huffman codes are not cached (a cached value is kept until its slot is reused).
const MAX_CACHED_HUFFMAN: usize = 128;

/// Decodes header blocks of one connection direction.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index `DYNAMIC_BASE + i` is `table[i]`.
    table: VecDeque<(Bytes, Bytes)>,
    /// Sum of entry sizes.
    size: usize,
    /// The current maximum, as set by the peer's size updates.
    max: usize,
    /// Our SETTINGS_HEADER_TABLE_SIZE: size updates above it are errors.
    limit: usize,
    /// Huffman-coded values of fields sent *without indexing*, recently decoded: (code,
    /// decoded), direct-mapped by a hash of the code; empty until the first one. Such values
    /// can repeat call after call (h2 sends every `:path` this way, Huffman-coded) and would
    /// otherwise be decoded and allocated again each time; a hit is a compare and a clone.
    /// Indexed literals come back as table entries instead, and never-indexed ones (the
    /// peer's credentials) are not kept.
    huffman: Vec<(Bytes, Bytes)>,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertise (4096 by default).
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: max_table_size,
            limit: max_table_size,
            huffman: Vec::new(),
        }
    }

    /// Decodes one complete header block, calling `field(name, value)` for every field in
    /// order. `block` is a Bytes so raw (non-Huffman) strings are handed out as zero-copy slices
    /// of it; Huffman strings are decoded into fresh Bytes; table entries are Bytes clones.
    /// `max_list_size`: RFC 9113 header list size (sum of name + value + 32 per field); over
    /// it returns HpackError::ListTooLarge after still decoding the whole block (so the
    /// dynamic table stays in sync: the caller then refuses only the stream). `field` is not
    /// called for the fields after the limit was crossed.
    ///
    /// Names are not checked (case, pseudo-header order): that is HTTP semantics, for the
    /// caller. Never-indexed fields are handed out like others.
    pub fn decode(
        &mut self,
        block: &Bytes,
        max_list_size: usize,
        mut field: impl FnMut(Bytes, Bytes),
    ) -> Result<(), HpackError> {
        let buf: &[u8] = block;
        let mut pos = 0;
        let mut list_size = 0usize;
        let mut too_large = false;
        let mut in_fields = false;
        while let Some(&b) = buf.get(pos) {
            let (name, value) = if b & 0x80 != 0 {
                // Indexed field (section 6.1).
                let index = read_int(buf, &mut pos, 7)?;
                self.get(index)?
            } else if b & 0x40 != 0 {
                // Literal with incremental indexing (section 6.2.1).
                let index = read_int(buf, &mut pos, 6)?;
                let name = self.literal_name(block, &mut pos, index)?;
                let value = read_string(block, &mut pos)?;
                self.insert(name, value)
            } else if b & 0x20 != 0 {
                // Dynamic table size update (section 6.3): only before the first field.
                if in_fields {
                    return Err(HpackError::SizeUpdateNotAtStart);
                }
                let size = read_int(buf, &mut pos, 5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdateTooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                self.max = size;
                self.evict();
                continue;
            } else {
                // Literal without indexing or never indexed (sections 6.2.2, 6.2.3).
                let index = read_int(buf, &mut pos, 4)?;
                let name = self.literal_name(block, &mut pos, index)?;
                let value = if b & 0x10 == 0 {
                    self.unindexed_value(block, &mut pos)?
                } else {
                    read_string(block, &mut pos)?
                };
                (name, value)
            };
            in_fields = true;
            list_size = list_size.saturating_add(name.len() + value.len() + ENTRY_OVERHEAD);
            if list_size > max_list_size {
                too_large = true;
                if list_size / BOMB_FACTOR > max_list_size {
                    return Err(HpackError::Bomb(max_list_size.saturating_mul(BOMB_FACTOR)));
                }
            }
            if !too_large {
                field(name, value);
            }
        }
        if too_large {
            return Err(HpackError::ListTooLarge(max_list_size));
        }
        Ok(())
    }

    /// The value of a literal without indexing, through the Huffman cache.
    fn unindexed_value(&mut self, block: &Bytes, pos: &mut usize) -> Result<Bytes, HpackError> {
        let (huffman, start, end) = string_span(block, pos)?;
        let code = &block[start..end];
        if !huffman {
            return Ok(block.slice(start..end));
        }
        if code.len() > MAX_CACHED_HUFFMAN {
            return decode_huffman(code);
        }
        let slot = (sample_hash(code) >> (64 - HUFFMAN_SLOTS.trailing_zeros())) as usize;
        if let Some((cached, value)) = self.huffman.get(slot)
            && cached[..] == *code
        {
            return Ok(value.clone());
        }
        let value = decode_huffman(code)?;
        if self.huffman.is_empty() {
            self.huffman = vec![(Bytes::new(), Bytes::new()); HUFFMAN_SLOTS];
        }
        if let Some(entry) = self.huffman.get_mut(slot) {
            *entry = (Bytes::copy_from_slice(code), value.clone());
        }
        Ok(value)
    }

    /// The field at `index` of the static or dynamic table.
    fn get(&self, index: usize) -> Result<(Bytes, Bytes), HpackError> {
        if index >= DYNAMIC_BASE {
            return self
                .table
                .get(index - DYNAMIC_BASE)
                .cloned()
                .ok_or(HpackError::IndexOutOfRange(index));
        }
        match index.checked_sub(1).and_then(|i| STATIC.get(i)) {
            Some(&(name, value)) => Ok((Bytes::from_static(name), Bytes::from_static(value))),
            None => Err(HpackError::IndexOutOfRange(index)),
        }
    }

    /// A literal's name: by `index`, or a string literal when `index` is 0.
    fn literal_name(
        &self,
        block: &Bytes,
        pos: &mut usize,
        index: usize,
    ) -> Result<Bytes, HpackError> {
        if index == 0 {
            read_string(block, pos)
        } else {
            self.get(index).map(|(name, _)| name)
        }
    }

    /// Adds a field (copied into one allocation, see the module docs) and returns it.
    fn insert(&mut self, name: Bytes, value: Bytes) -> (Bytes, Bytes) {
        let entry_size = name.len() + value.len() + ENTRY_OVERHEAD;
        if entry_size > self.max {
            // Section 4.4: an entry larger than the table empties it and is not added.
            self.table.clear();
            self.size = 0;
            return (name, value);
        }
        let mut both = BytesMut::with_capacity(name.len() + value.len());
        both.extend_from_slice(&name);
        both.extend_from_slice(&value);
        let value = both.split_off(name.len()).freeze();
        let name = both.freeze();
        self.size += entry_size;
        self.table.push_front((name.clone(), value.clone()));
        self.evict();
        (name, value)
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => self.size = 0,
            }
        }
    }
}

/// Static table name lookup: open addressing over 128 slots, keyed by a hash of the name's
/// length and a few bytes, built at compile time. A slot holds (first index, entries with this
/// name); 0 is empty.
const STATIC_SLOTS: usize = 128;

const fn static_hash(name: &[u8]) -> usize {
    let len = name.len();
    if len == 0 {
        return 0;
    }
    let h = (len as u32).wrapping_mul(0x9e37_79b1)
        ^ (name[0] as u32).wrapping_mul(0x85eb_ca6b)
        ^ (name[len - 1] as u32).wrapping_mul(0xc2b2_ae35)
        ^ (name[len / 2] as u32).wrapping_mul(0x27d4_eb2f);
    ((h ^ (h >> 15)) as usize) & (STATIC_SLOTS - 1)
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn build_static_slots() -> [(u8, u8); STATIC_SLOTS] {
    let mut slots = [(0u8, 0u8); STATIC_SLOTS];
    let mut i = 0;
    while i < STATIC.len() {
        let name = STATIC[i].0;
        let mut count = 1;
        while i + count < STATIC.len() && bytes_eq(STATIC[i + count].0, name) {
            count += 1;
        }
        let mut slot = static_hash(name);
        while slots[slot].0 != 0 {
            slot = (slot + 1) & (STATIC_SLOTS - 1);
        }
        slots[slot] = ((i + 1) as u8, count as u8);
        i += count;
    }
    slots
}

static STATIC_INDEX: [(u8, u8); STATIC_SLOTS] = build_static_slots();

/// The static table's match for a field: (index of the first entry with this name or 0,
/// index of the exact entry or 0).
fn static_lookup(name: &[u8], value: &[u8]) -> (usize, usize) {
    let mut slot = static_hash(name);
    loop {
        let (first, count) = STATIC_INDEX[slot];
        if first == 0 {
            return (0, 0);
        }
        let first = first as usize;
        if STATIC[first - 1].0 == name {
            let exact = (first..first + count as usize)
                .find(|&i| STATIC[i - 1].1 == value)
                .unwrap_or(0);
            return (first, exact);
        }
        slot = (slot + 1) & (STATIC_SLOTS - 1);
    }
}

/// A hash of a string's length and three of its bytes: O(1) whatever the length, as the
/// encoder hashes every field it sends (hashing every byte cost as much as the comparison
/// it saves). Collisions only cost a comparison: every hit is checked against the bytes.
fn sample_hash(s: &[u8]) -> u64 {
    let len = s.len();
    if len == 0 {
        return 0;
    }
    let w = len as u64
        | u64::from(s[0]) << 32
        | u64::from(s[len / 2]) << 40
        | u64::from(s[len - 1]) << 48;
    w.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A name's hash (compared within the dynamic table) and the whole field's (the cache key).
fn field_hashes(name: &[u8], value: &[u8]) -> (u64, u64) {
    let name_hash = sample_hash(name);
    let field =
        (name_hash.rotate_left(29) ^ sample_hash(value)).wrapping_mul(0x517c_c1b7_2722_0a95);
    (name_hash, field)
}

/// Credentials: always "never indexed", so no intermediary ever stores them in a table.
fn is_sensitive(name: &[u8]) -> bool {
    matches!(
        name,
        b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie"
    )
}

/// Values that rarely repeat: indexing them would only evict useful entries.
fn is_unique_valued(name: &[u8]) -> bool {
    matches!(
        name,
        b"grpc-timeout" | b"grpc-message" | b"content-length" | b"date"
    )
}

/// Fields larger than this (name + value) are not indexed.
const MAX_INDEXED_FIELD: usize = 256;

/// One dynamic table entry of the encoder: name and value in one allocation.
#[derive(Debug)]
struct Entry {
    name_hash: u64,
    name_len: usize,
    field: Box<[u8]>,
}

impl Entry {
    fn name(&self) -> &[u8] {
        self.field.get(..self.name_len).unwrap_or_default()
    }
    fn value(&self) -> &[u8] {
        self.field.get(self.name_len..).unwrap_or_default()
    }
    fn size(&self) -> usize {
        self.field.len() + ENTRY_OVERHEAD
    }
}

/// Slots of the encoder's field cache: a power of two, comfortably more than the dozen
/// distinct fields a gRPC connection repeats, and small (8 bytes each) per connection.
const CACHE_SLOTS: usize = 32;

/// A cache slot's payload: 0 empty, `1..=61` a static index, `DYN_SLOT | seq` the dynamic
/// entry inserted as number `seq` (31 bits, wrapping: a stale or wrapped slot fails the byte
/// check, see `Encoder::cached`).
const DYN_SLOT: u32 = 1 << 31;

/// Encodes header blocks of one connection direction, mirroring the peer decoder's table.
#[derive(Debug)]
pub struct Encoder {
    /// Newest first: index `DYNAMIC_BASE + i` is `table[i]`.
    table: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// Size updates owed at the next block start: (smallest size since the last block, final).
    pending: Option<(usize, usize)>,
    /// Entries inserted so far (mod 2^31): the newest entry is number `inserted - 1`, so entry
    /// number `seq` sits at `table[inserted - 1 - seq]` while it has not been evicted.
    inserted: u32,
    /// Field hash -> where that field was last found: (the hash's low 32 bits as a tag, payload).
    /// Only a hint: the table state is never changed by it, and a hit is used only after the
    /// entry's bytes compare equal, so the output is what the table scan would give.
    cache: [(u32, u32); CACHE_SLOTS],
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// Table size 4096 (the default every peer starts with).
    pub fn new() -> Self {
        Encoder {
            table: VecDeque::new(),
            size: 0,
            max: DEFAULT_TABLE_SIZE,
            pending: None,
            inserted: 0,
            cache: [(0, 0); CACHE_SLOTS],
        }
    }

    /// The cache slot (the hash's top bits, the best mixed) and tag of a field hash.
    fn slot(hash: u64) -> (usize, u32) {
        let bits = CACHE_SLOTS.trailing_zeros();
        ((hash >> (64 - bits)) as usize, hash as u32)
    }

    /// The index of `(name, value)` if the cache knows where it is and the table still holds
    /// exactly those bytes there.
    fn cached(&self, hash: u64, name: &[u8], value: &[u8]) -> Option<usize> {
        let (slot, tag) = Self::slot(hash);
        let (got_tag, payload) = self.cache[slot];
        if got_tag != tag || payload == 0 {
            return None;
        }
        if payload & DYN_SLOT == 0 {
            let index = payload as usize;
            let (n, v) = STATIC.get(index.wrapping_sub(1))?;
            return (*n == name && *v == value).then_some(index);
        }
        let pos = self.inserted.wrapping_sub(1).wrapping_sub(payload) & !DYN_SLOT;
        let e = self.table.get(pos as usize)?;
        (e.name() == name && e.value() == value).then_some(DYNAMIC_BASE + pos as usize)
    }

    fn remember(&mut self, hash: u64, payload: u32) {
        let (slot, tag) = Self::slot(hash);
        self.cache[slot] = (tag, payload);
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the encoder uses min(size, 4096) and emits a
    /// dynamic table size update at the start of the next block.
    pub fn set_max_table_size(&mut self, size: usize) {
        let size = size.min(DEFAULT_TABLE_SIZE);
        self.pending = Some(match self.pending {
            Some((smallest, _)) => (smallest.min(size), size),
            None => (size, size),
        });
    }

    /// Starts a header block (emits a pending table size update). When the size went down and
    /// up again since the last block, both the smallest and the final size are signalled
    /// (RFC 7541 section 4.2); an unchanged size is not signalled.
    pub fn begin_block(&mut self, dst: &mut BytesMut) {
        let Some((smallest, last)) = self.pending.take() else {
            return;
        };
        if smallest < last {
            self.resize(smallest, dst);
        }
        if last != self.max {
            self.resize(last, dst);
        }
    }

    fn resize(&mut self, size: usize, dst: &mut BytesMut) {
        dst.reserve(4);
        put_int(dst, 0x20, 5, size);
        self.max = size;
        self.evict(0);
    }

    /// Appends one field to `dst` (call `begin_block` first for each block). Strings are
    /// written raw (no Huffman: cheaper, RFC-legal). Order of preference: exact match in the
    /// static or dynamic table (indexed, 1-2 bytes); else literal *with incremental indexing*
    /// (name by index when the name is in a table) unless the field must not be indexed:
    /// `never_index` true (or a credential name: authorization, cookie, set-cookie,
    /// proxy-authorization -> "never indexed" representation) or a value unlikely to repeat
    /// (grpc-timeout, grpc-message, content-length, date, or name+value longer than 256 bytes
    /// -> "without indexing").
    pub fn encode(&mut self, name: &[u8], value: &[u8], never_index: bool, dst: &mut BytesMut) {
        let sensitive = never_index || is_sensitive(name);
        if !sensitive && is_unique_valued(name) {
            // Never indexed here, so never in the dynamic table (name or field): only the
            // static table can match. Skips hashing, the cache and the table scan for the
            // `date` every response carries.
            let (name_index, exact) = static_lookup(name, value);
            if exact != 0 {
                dst.reserve(1);
                put_int(dst, 0x80, 7, exact);
            } else {
                dst.reserve(name.len() + value.len() + 10);
                put_literal(dst, 0x00, 4, name_index, name, value);
            }
            return;
        }
        let (hash, field_hash) = field_hashes(name, value);
        if !sensitive && let Some(index) = self.cached(field_hash, name, value) {
            dst.reserve(2);
            put_int(dst, 0x80, 7, index);
            return;
        }
        let (mut name_index, exact) = static_lookup(name, value);
        if exact != 0 && !sensitive {
            self.remember(field_hash, exact as u32);
            dst.reserve(1);
            put_int(dst, 0x80, 7, exact);
            return;
        }
        if !sensitive || name_index == 0 {
            for (i, e) in self.table.iter().enumerate() {
                if e.name_hash != hash || e.name() != name {
                    continue;
                }
                if !sensitive && e.value() == value {
                    let seq = self.inserted.wrapping_sub(1).wrapping_sub(i as u32);
                    self.remember(field_hash, DYN_SLOT | (seq & !DYN_SLOT));
                    dst.reserve(2);
                    put_int(dst, 0x80, 7, DYNAMIC_BASE + i);
                    return;
                }
                if name_index == 0 {
                    name_index = DYNAMIC_BASE + i;
                    if sensitive {
                        break;
                    }
                }
            }
        }
        let field_len = name.len() + value.len();
        // Prefix bytes: up to 4 for the name index or length, 5 for the value length.
        dst.reserve(field_len + 10);
        if sensitive {
            put_literal(dst, 0x10, 4, name_index, name, value);
        } else if field_len > MAX_INDEXED_FIELD || field_len + ENTRY_OVERHEAD > self.max {
            // (An entry larger than the table would empty the peer's table: not worth it.)
            put_literal(dst, 0x00, 4, name_index, name, value);
        } else {
            put_literal(dst, 0x40, 6, name_index, name, value);
            self.insert(hash, name, value);
            let seq = self.inserted.wrapping_sub(1);
            self.remember(field_hash, DYN_SLOT | (seq & !DYN_SLOT));
        }
    }

    /// Mirrors the peer's insertion (the caller checked the entry fits).
    fn insert(&mut self, name_hash: u64, name: &[u8], value: &[u8]) {
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        let entry = Entry {
            name_hash,
            name_len: name.len(),
            field: field.into_boxed_slice(),
        };
        self.evict(entry.size());
        self.size += entry.size();
        self.table.push_front(entry);
        self.inserted = self.inserted.wrapping_add(1) & !DYN_SLOT;
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// Writes an integer with a `prefix`-bit prefix after `flags` (section 5.1). Callers reserve.
/// Inlined: nearly every call is an index below the prefix, one byte.
#[inline]
fn put_int(dst: &mut BytesMut, flags: u8, prefix: u32, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// A raw string literal (H bit clear).
fn put_string(dst: &mut BytesMut, s: &[u8]) {
    put_int(dst, 0, 7, s.len());
    dst.extend_from_slice(s);
}

/// A literal field: name by index, or a literal name when `name_index` is 0.
fn put_literal(
    dst: &mut BytesMut,
    flags: u8,
    prefix: u32,
    name_index: usize,
    name: &[u8],
    value: &[u8],
) {
    put_int(dst, flags, prefix, name_index);
    if name_index == 0 {
        put_string(dst, name);
    }
    put_string(dst, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    type Fields = Vec<(String, String)>;

    fn decode(d: &mut Decoder, block: &Bytes) -> Result<Fields, HpackError> {
        let mut out = Vec::new();
        d.decode(block, usize::MAX, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(out)
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn table(d: &Decoder) -> Vec<(&[u8], &[u8])> {
        d.table.iter().map(|(n, v)| (&n[..], &v[..])).collect()
    }

    #[test]
    fn c2_literal_forms() {
        // C.2.1 literal with indexing.
        let mut d = Decoder::new(4096);
        let f = decode(
            &mut d,
            &hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"),
        );
        assert_eq!(f.unwrap(), fields(&[("custom-key", "custom-header")]));
        assert_eq!(d.size, 55);
        assert_eq!(table(&d), vec![(&b"custom-key"[..], &b"custom-header"[..])]);
        // C.2.2 without indexing.
        let mut d = Decoder::new(4096);
        let f = decode(&mut d, &hex("040c2f73616d706c652f70617468"));
        assert_eq!(f.unwrap(), fields(&[(":path", "/sample/path")]));
        assert!(d.table.is_empty());
        // C.2.3 never indexed.
        let f = decode(&mut d, &hex("100870617373776f726406736563726574"));
        assert_eq!(f.unwrap(), fields(&[("password", "secret")]));
        assert!(d.table.is_empty());
        // C.2.4 indexed.
        let f = decode(&mut d, &hex("82"));
        assert_eq!(f.unwrap(), fields(&[(":method", "GET")]));
        assert!(d.table.is_empty());
    }

    /// C.3 (raw) and C.4 (Huffman) encode the same three requests.
    fn check_requests(blocks: [&str; 3]) {
        let mut d = Decoder::new(4096);
        let f = decode(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(
            f,
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        let f = decode(&mut d, &hex(blocks[1])).unwrap();
        assert_eq!(
            f,
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.size, 110);
        let f = decode(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(
            f,
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
        assert_eq!(
            table(&d),
            vec![
                (&b"custom-key"[..], &b"custom-value"[..]),
                (b"cache-control", b"no-cache"),
                (b":authority", b"www.example.com"),
            ]
        );
    }

    #[test]
    fn c3_requests_without_huffman() {
        check_requests([
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ]);
    }

    #[test]
    fn c4_requests_with_huffman() {
        check_requests([
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ]);
    }

    /// C.5 (raw) and C.6 (Huffman): three responses with a 256-byte table, evicting.
    fn check_responses(blocks: [&str; 3]) {
        let mut d = Decoder::new(256);
        let f = decode(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(
            f,
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.size, 222);
        let f = decode(&mut d, &hex(blocks[1])).unwrap();
        assert_eq!(
            f,
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.size, 222);
        assert_eq!(
            table(&d),
            vec![
                (&b":status"[..], &b"307"[..]),
                (b"location", b"https://www.example.com"),
                (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
                (b"cache-control", b"private"),
            ]
        );
        let f = decode(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(
            f,
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                )
            ])
        );
        assert_eq!(d.size, 215);
        assert_eq!(
            table(&d),
            vec![
                (
                    &b"set-cookie"[..],
                    &b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"[..]
                ),
                (b"content-encoding", b"gzip"),
                (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
            ]
        );
    }

    #[test]
    fn c5_responses_without_huffman() {
        check_responses([
            "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a3231
             20474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            "4803333037c1c0bf",
            "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970
             7738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167
             653d333630303b2076657273696f6e3d31",
        ]);
    }

    #[test]
    fn c6_responses_with_huffman() {
        check_responses([
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad
             171863c78f0b97c8e9ae82ae43d3",
            "4883640effc1c0bf",
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2
             e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        ]);
    }

    #[test]
    fn raw_strings_are_slices_of_the_block() {
        let block =
            hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572040c2f73616d706c652f70617468");
        let mut d = Decoder::new(4096);
        let range = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
        let mut seen = Vec::new();
        d.decode(&block, usize::MAX, |n, v| seen.push((n, v)))
            .unwrap();
        // The indexed literal was copied into the table (not pinning the block) ...
        assert!(!range.contains(&(seen[0].1.as_ptr() as usize)));
        // ... the non-indexed one is a zero-copy slice.
        assert!(range.contains(&(seen[1].1.as_ptr() as usize)));
    }

    #[test]
    fn decoder_errors() {
        let cases: &[(&str, HpackError)] = &[
            ("80", HpackError::IndexOutOfRange(0)),
            ("be", HpackError::IndexOutOfRange(62)),
            ("7f00", HpackError::IndexOutOfRange(63)),
            ("ff9f4e", HpackError::IndexOutOfRange(10_142)),
            ("40", HpackError::Truncated),
            ("4000", HpackError::Truncated),
            ("400161", HpackError::Truncated),
            ("40016103", HpackError::Truncated),
            ("ff", HpackError::Truncated),
            ("ff80", HpackError::Truncated),
            ("1f8080808080808080", HpackError::IntegerOverflow),
            ("ffffffffff0f", HpackError::IntegerOverflow),
            ("0f2f", HpackError::IndexOutOfRange(62)),
            ("8220", HpackError::SizeUpdateNotAtStart),
            (
                "3fe21f",
                HpackError::SizeUpdateTooLarge {
                    size: 4097,
                    limit: 4096,
                },
            ),
            ("0481ff", HpackError::InvalidHuffman),
            ("048118", HpackError::InvalidHuffman),
            ("0484ffffffff", HpackError::InvalidHuffman),
        ];
        for (block, want) in cases {
            let mut d = Decoder::new(4096);
            assert_eq!(decode(&mut d, &hex(block)).unwrap_err(), *want, "{block}");
        }
        // Size updates at the start (several) are fine; 4096 is the limit.
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, &hex("203fe11f82")).unwrap().len(), 1);
        assert_eq!(d.max, 4096);
    }

    #[test]
    fn size_update_evicts() {
        let mut d = Decoder::new(4096);
        decode(
            &mut d,
            &hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"),
        )
        .unwrap();
        assert_eq!(d.size, 55);
        decode(&mut d, &hex("20")).unwrap();
        assert!(d.table.is_empty());
        assert_eq!(d.size, 0);
        // With a zero-size table, an indexed literal is not added.
        decode(
            &mut d,
            &hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"),
        )
        .unwrap();
        assert!(d.table.is_empty());
        assert_eq!(
            decode(&mut d, &hex("be")).unwrap_err(),
            HpackError::IndexOutOfRange(62)
        );
    }

    #[test]
    fn a_list_far_over_the_limit_is_a_bomb_and_stops_decoding() {
        let mut d = Decoder::new(4096);
        // "custom-key: custom-header" inserted (55 bytes with overhead), then referenced 100
        // times: 5,555 bytes decoded against a limit of 100 (over 16 times it: a bomb).
        let mut block = hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572").to_vec();
        block.extend(std::iter::repeat_n(0xbe, 100));
        let mut seen = 0;
        let r = d.decode(&Bytes::from(block), 100, |_, _| seen += 1);
        assert_eq!(r, Err(HpackError::Bomb(100 * BOMB_FACTOR)));
        assert_eq!(seen, 1, "only the field within the limit is handed out");
        // Just over the limit is not a bomb.
        let mut block = vec![0xbe; 2];
        block.insert(0, 0xbe);
        let r = d.decode(&Bytes::from(block), 100, |_, _| {});
        assert_eq!(r, Err(HpackError::ListTooLarge(100)));
    }

    #[test]
    fn list_too_large_keeps_the_table_in_sync() {
        let mut e = Encoder::new();
        let mut block = BytesMut::new();
        e.begin_block(&mut block);
        e.encode(b"x-one", b"1", false, &mut block);
        e.encode(b"x-two", &[b'2'; 100], false, &mut block);
        e.encode(b"x-three", b"3", false, &mut block);
        let mut d = Decoder::new(4096);
        let mut seen = 0;
        let r = d.decode(&block.freeze(), 100, |_, _| seen += 1);
        assert_eq!(r, Err(HpackError::ListTooLarge(100)));
        assert_eq!(seen, 1, "fields after the limit are not handed out");
        assert_eq!(d.table.len(), 3, "every insertion happened");
        // The next block refers to all three.
        let mut block = BytesMut::new();
        e.begin_block(&mut block);
        e.encode(b"x-three", b"3", false, &mut block);
        e.encode(b"x-one", b"1", false, &mut block);
        assert_eq!(&block[..], &[0x80 | 62, 0x80 | 64]);
        let f = decode(&mut d, &block.freeze()).unwrap();
        assert_eq!(f, fields(&[("x-three", "3"), ("x-one", "1")]));
    }

    /// Encodes `list` as one block and decodes it with `d`, checking the fields survive.
    fn round_trip(e: &mut Encoder, d: &mut Decoder, list: &[(&str, &str, bool)]) -> Bytes {
        let mut block = BytesMut::new();
        e.begin_block(&mut block);
        for (n, v, never) in list {
            e.encode(n.as_bytes(), v.as_bytes(), *never, &mut block);
        }
        let block = block.freeze();
        let got = decode(d, &block).unwrap();
        let want: Fields = list
            .iter()
            .map(|(n, v, _)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(e.size, d.size, "tables out of step");
        assert_eq!(e.table.len(), d.table.len());
        for (a, (n, v)) in e.table.iter().zip(&d.table) {
            assert_eq!((a.name(), a.value()), (&n[..], &v[..]));
        }
        block
    }

    #[test]
    fn grpc_blocks_shrink_to_indexes() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let request = [
            (":method", "POST", false),
            (":scheme", "http", false),
            (":path", "/viam.robot.v1.RobotService/GetStatus", false),
            (":authority", "part-1.local", false),
            ("content-type", "application/grpc", false),
            ("te", "trailers", false),
            ("grpc-timeout", "10S", false),
            ("authorization", "Bearer abc", false),
        ];
        let first = round_trip(&mut e, &mut d, &request);
        let second = round_trip(&mut e, &mut d, &request);
        // POST, scheme: static; path, authority, content-type, te: dynamic (1 byte each);
        // grpc-timeout: name by index + value; authorization: never indexed, static name.
        assert_eq!(
            &second[..],
            b"\x83\x86\xc1\xc0\xbf\xbe\x00\x0cgrpc-timeout\x0310S\x1f\x08\x0aBearer abc"
        );
        assert!(first.len() > second.len());
        // content-type went in with the static name index (31).
        assert!(first.windows(2).any(|w| w == [0x40 | 31, 16]));

        let response = [
            (":status", "200", false),
            ("content-type", "application/grpc", false),
        ];
        let trailers = [("grpc-status", "0", false), ("grpc-message", "", false)];
        round_trip(&mut e, &mut d, &response);
        round_trip(&mut e, &mut d, &trailers);
        let block = round_trip(&mut e, &mut d, &response);
        // grpc-status went in after content-type: 62 is grpc-status, 64 content-type.
        assert_eq!(&block[..], &[0x88, 0x80 | 64]);
        let block = round_trip(&mut e, &mut d, &trailers);
        assert_eq!(&block[..], b"\xbe\x00\x0cgrpc-message\x00");
    }

    #[test]
    fn never_indexed_and_unindexed_forms() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let b = round_trip(&mut e, &mut d, &[("password", "secret", true)]);
        assert_eq!(b, hex("100870617373776f726406736563726574"));
        // Sensitive names are never indexed even when the caller did not say so, and never
        // matched exactly (the static entry has an empty value).
        let b = round_trip(
            &mut e,
            &mut d,
            &[("cookie", "", false), ("set-cookie", "a=b", false)],
        );
        assert_eq!(&b[..], b"\x1f\x11\x00\x1f\x28\x03a=b");
        let b = round_trip(&mut e, &mut d, &[(":path", "/sample/path", false)]);
        assert_eq!(b, hex("440c2f73616d706c652f70617468"));
        // A sensitive field is never matched exactly, but its name is taken by index: static
        // first, else dynamic.
        let b = round_trip(&mut e, &mut d, &[(":path", "/sample/path", true)]);
        assert_eq!(&b[..], b"\x14\x0c/sample/path");
        round_trip(&mut e, &mut d, &[("x-dyn", "1", false)]);
        let b = round_trip(&mut e, &mut d, &[("x-dyn", "1", true)]);
        assert_eq!(&b[..], b"\x1f\x2f\x011");
        let b = round_trip(
            &mut e,
            &mut d,
            &[("x-secret", "a", true), ("x-secret", "a", true)],
        );
        assert_eq!(&b[..], b"\x10\x08x-secret\x01a\x10\x08x-secret\x01a");
        assert_eq!(d.table.len(), 2);
        // Large fields are not indexed.
        let big = "v".repeat(300);
        let b = round_trip(&mut e, &mut d, &[("x-big", &big, false)]);
        assert_eq!(b[0], 0x00);
        assert_eq!(d.table.len(), 2);
    }

    /// The field cache only short-cuts lookups: an encoder whose cache is wiped before every
    /// field (so it always scans the tables) must write the same bytes, through evictions,
    /// size updates, slot collisions (more distinct fields than slots) and the wrap of the
    /// insertion counter; and the blocks decode to the fields with the tables in step.
    #[test]
    fn cache_writes_what_the_table_scan_writes() {
        let mut cached = Encoder::new();
        let mut scan = Encoder::new();
        // Start just below the wrap of the 31-bit insertion counter.
        cached.inserted = DYN_SLOT - 5;
        scan.inserted = DYN_SLOT - 5;
        let mut d = Decoder::new(4096);
        let mut lcg = 12345u64;
        let mut next = |n: u64| {
            lcg = lcg
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (lcg >> 33) % n
        };
        for round in 0..400 {
            if round % 97 == 96 {
                let size = [0, 200, 4096, 1000][(round / 97) % 4];
                cached.set_max_table_size(size);
                scan.set_max_table_size(size);
            }
            let mut list = Vec::new();
            for _ in 0..(1 + next(12)) {
                let (n, v) = match next(6) {
                    0 => (
                        ":method".to_string(),
                        ["POST", "GET", "PUT"][next(3) as usize].to_string(),
                    ),
                    1 => ("content-type".to_string(), "application/grpc".to_string()),
                    2 => (":path".to_string(), format!("/svc.S/M{}", next(70))),
                    3 => (format!("x-f{}", next(50)), format!("{}", next(4))),
                    4 => match next(3) {
                        0 => ("authorization".to_string(), "Bearer t".to_string()),
                        1 => ("date".to_string(), format!("Tue, {} Nov", next(3))),
                        _ => ("grpc-timeout".to_string(), format!("{}m", next(3))),
                    },
                    _ => ("grpc-status".to_string(), format!("{}", next(3))),
                };
                list.push((n, v, next(20) == 0));
            }
            let mut a = BytesMut::new();
            let mut b = BytesMut::new();
            cached.begin_block(&mut a);
            scan.begin_block(&mut b);
            for (n, v, never) in &list {
                cached.encode(n.as_bytes(), v.as_bytes(), *never, &mut a);
                scan.cache = [(0, 0); CACHE_SLOTS];
                scan.encode(n.as_bytes(), v.as_bytes(), *never, &mut b);
            }
            assert_eq!(a, b, "round {round}");
            let got = decode(&mut d, &a.freeze()).unwrap();
            let want: Fields = list
                .iter()
                .map(|(n, v, _)| (n.clone(), v.clone()))
                .collect();
            assert_eq!(got, want);
            assert_eq!(cached.size, d.size, "tables out of step");
        }
        assert!(cached.inserted < 1000, "the counter wrapped");
    }

    /// Huffman-coded values sent without indexing come from the cache the second time (the
    /// same Bytes), decode right when slots collide, and never-indexed ones are not kept.
    #[test]
    fn huffman_values_without_indexing_are_cached() {
        let mut d = Decoder::new(4096);
        let literal = |flags: u8, value: &str| {
            let code = huffman::encode(value.as_bytes());
            let mut block = vec![flags | 4, 0x80 | code.len() as u8];
            block.extend_from_slice(&code);
            Bytes::from(block)
        };
        let path = "/viam.component.motor.v1.MotorService/IsPowered";
        let block = literal(0x00, path);
        let mut got = Vec::new();
        for _ in 0..2 {
            d.decode(&block, usize::MAX, |n, v| got.push((n, v)))
                .unwrap();
        }
        assert_eq!(got[0], (Bytes::from_static(b":path"), Bytes::from(path)));
        assert_eq!(got[0], got[1]);
        assert_eq!(
            got[0].1.as_ptr(),
            got[1].1.as_ptr(),
            "second one from the cache"
        );
        // Many distinct values: every one decodes right whatever the slot reuse.
        for round in 0..3 {
            for i in 0..40 {
                let value = format!("/svc.S/M{i}");
                let f = decode(&mut d, &literal(0x00, &value)).unwrap();
                assert_eq!(f, fields(&[(":path", &value)]), "round {round}");
            }
        }
        // Never indexed: decoded, not cached.
        let mut d = Decoder::new(4096);
        let block = literal(0x10, "secret");
        d.decode(&block, usize::MAX, |_, v| assert_eq!(&v[..], b"secret"))
            .unwrap();
        assert!(d.huffman.is_empty());
        assert!(d.table.is_empty());
    }

    #[test]
    fn eviction_stays_in_step() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let names: Vec<String> = (0..300).map(|i| format!("x-field-{}", i % 37)).collect();
        let values: Vec<String> = (0..300)
            .map(|i| format!("value-{}", i * 7919 % 101))
            .collect();
        for chunk in (0..300).collect::<Vec<_>>().chunks(9) {
            let list: Vec<(&str, &str, bool)> = chunk
                .iter()
                .map(|&i| (names[i].as_str(), values[i].as_str(), false))
                .collect();
            round_trip(&mut e, &mut d, &list);
            assert!(d.size <= 4096);
        }
        assert!(d.table.len() > 50);
    }

    #[test]
    fn size_updates() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        round_trip(&mut e, &mut d, &[("x-a", "1", false), ("x-b", "2", false)]);
        assert_eq!(d.table.len(), 2);
        // Shrink to 0: the update empties both tables, nothing is indexed afterwards.
        e.set_max_table_size(0);
        let b = round_trip(&mut e, &mut d, &[("x-a", "1", false)]);
        assert_eq!(&b[..], b"\x20\x00\x03x-a\x011");
        assert!(d.table.is_empty());
        // Down to 50 then up to 1 MiB (used as 4096) between blocks: both are signalled.
        e.set_max_table_size(50);
        e.set_max_table_size(1 << 20);
        let b = round_trip(&mut e, &mut d, &[("x-a", "1", false)]);
        assert_eq!(&b[..4], b"\x3f\x13\x3f\xe1");
        assert_eq!(d.max, 4096);
        assert_eq!(d.table.len(), 1);
        // Unchanged: nothing emitted.
        e.set_max_table_size(4096);
        let b = round_trip(&mut e, &mut d, &[("x-a", "1", false)]);
        assert_eq!(&b[..], &[0x80 | 62]);
        // A small table: entries larger than it are not indexed, smaller ones evict.
        e.set_max_table_size(40);
        let b = round_trip(
            &mut e,
            &mut d,
            &[("x-long-name", "value", false), ("x", "1", false)],
        );
        assert_eq!(&b[..2], b"\x3f\x09");
        assert_eq!(d.table.len(), 1);
        let b = round_trip(&mut e, &mut d, &[("x", "2", false), ("x", "1", false)]);
        assert_eq!(d.table.len(), 1);
        assert_eq!(b[0], 0x40 | 62, "name from the dynamic table");
        // Without begin_block, nothing pending is emitted by encode itself.
        e.set_max_table_size(100);
        let mut block = BytesMut::new();
        e.encode(b":method", b"GET", false, &mut block);
        assert_eq!(&block[..], &[0x82]);
    }

    #[test]
    fn static_lookup_finds_every_entry() {
        for (i, &(name, value)) in STATIC.iter().enumerate() {
            let (name_index, exact) = static_lookup(name, value);
            assert_eq!(STATIC[name_index - 1].0, name);
            assert_eq!(exact, i + 1, "{}", String::from_utf8_lossy(name));
        }
        assert_eq!(static_lookup(b":status", b"201"), (8, 0));
        assert_eq!(static_lookup(b"grpc-status", b"0"), (0, 0));
        assert_eq!(static_lookup(b"", b""), (0, 0));
    }

    #[test]
    fn integer_edges() {
        for prefix in [4, 5, 6, 7] {
            for v in [
                0,
                1,
                14,
                15,
                16,
                30,
                31,
                62,
                63,
                126,
                127,
                128,
                255,
                4096,
                1 << 20,
                u32::MAX as usize,
            ] {
                let mut b = BytesMut::new();
                put_int(&mut b, 0, prefix, v);
                let mut pos = 0;
                assert_eq!(read_int(&b, &mut pos, prefix).unwrap(), v);
                assert_eq!(pos, b.len());
            }
        }
        // RFC 7541 C.1: 1337 with a 5-bit prefix.
        let mut b = BytesMut::new();
        put_int(&mut b, 0, 5, 1337);
        assert_eq!(&b[..], &[0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn huffman_strings_decode() {
        let name = huffman::encode(b"x-custom");
        let value = huffman::encode(b"Some Value/with+odd~chars");
        let mut block = vec![0x40, 0x80 | name.len() as u8];
        block.extend_from_slice(&name);
        block.push(0x80 | value.len() as u8);
        block.extend_from_slice(&value);
        let mut d = Decoder::new(4096);
        let f = decode(&mut d, &Bytes::from(block)).unwrap();
        assert_eq!(f, fields(&[("x-custom", "Some Value/with+odd~chars")]));
    }

    #[test]
    fn fuzz_decoder_never_panics() {
        let mut rng = crate::frame::tests::Rng(0x2545_f491_4f6c_dd1d);
        let seeds = [
            hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"),
            hex("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff"),
            hex("400a637573746f6d2d6b65790d637573746f6d2d686561646572"),
        ];
        let mut d = Decoder::new(256);
        for i in 0..5000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = (rng.next() % 64) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                // A valid block with a few bytes flipped.
                let mut b = seeds[(rng.next() % 3) as usize].to_vec();
                for _ in 0..1 + rng.next() % 3 {
                    let at = (rng.next() as usize) % b.len();
                    b[at] ^= rng.next() as u8;
                }
                b
            };
            let _ = d.decode(&Bytes::from(bytes), 1024, |_, _| {});
            assert!(d.size <= d.max);
            if i % 100 == 0 {
                d = Decoder::new(256);
            }
        }
    }

    /// `cargo test --release --lib http2::hpack::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_grpc_response_blocks() {
        use std::time::Instant;
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let encode = |e: &mut Encoder, buf: &mut BytesMut| {
            e.begin_block(buf);
            e.encode(b":status", b"200", false, buf);
            e.encode(b"content-type", b"application/grpc", false, buf);
            let headers = buf.split().freeze();
            e.begin_block(buf);
            e.encode(b"grpc-status", b"0", false, buf);
            e.encode(b"grpc-message", b"", false, buf);
            (headers, buf.split().freeze())
        };
        let mut buf = BytesMut::with_capacity(4096);
        let (h, t) = encode(&mut e, &mut buf);
        for b in [&h, &t] {
            d.decode(b, usize::MAX, |_, _| {}).unwrap();
        }
        let (h, t) = encode(&mut e, &mut buf);
        const N: u32 = 2_000_000;
        let start = Instant::now();
        let mut n = 0usize;
        for _ in 0..N {
            for b in [&h, &t] {
                d.decode(std::hint::black_box(b), usize::MAX, |name, value| {
                    n += name.len() + value.len()
                })
                .unwrap();
            }
        }
        let dec = start.elapsed() / (2 * N);
        let start = Instant::now();
        for _ in 0..N {
            let (h, t) = encode(&mut e, &mut buf);
            std::hint::black_box((h, t));
            if buf.capacity() < 64 {
                buf.reserve(4096);
            }
        }
        let enc = start.elapsed() / (2 * N);
        // A Huffman-coded block (what h2 and grpc-go send): decoding allocates per string.
        let mut block = vec![0x88, 0x5f];
        let v = huffman::encode(b"application/grpc");
        block.push(0x80 | v.len() as u8);
        block.extend_from_slice(&v);
        let block = Bytes::from(block);
        let mut d2 = Decoder::new(4096);
        let start = Instant::now();
        for _ in 0..N {
            d2.decode(std::hint::black_box(&block), usize::MAX, |name, value| {
                n += name.len() + value.len()
            })
            .unwrap();
        }
        let huff = start.elapsed() / N;
        println!(
            "decode {dec:?}/block, encode {enc:?}/block (steady state, indexed); \
             first-time block with Huffman value {huff:?} ({n})"
        );
    }
}
