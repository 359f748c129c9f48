//! The stored-message layout (reference §8, Java's `MessageDecoder`), SEND_BATCH bodies (§5.3), the property
//! block (§8.1), sys flags (§8.2), tag hash codes, offsetMsgId (§6) and UNIQ_KEY generation.
//!
//! Pure byte layouts: no I/O. The broker encodes each message once with [`encode_stored_message`] when it
//! is stored, patches [`QUEUE_OFFSET_POSITION`] / [`PHYSICAL_OFFSET_POSITION`] with [`patch_offsets`] if it
//! serves a copy whose offsets were unknown at encoding time, and concatenates stored messages into PULL
//! bodies. Clients (and tests) decode them with [`decode_stored_message`] / [`StoredMessages`].
//!
//! raftmq writes only the V1 layout with IPv4 hosts and topics of at most 127 bytes, because C++-based
//! clients decode nothing else (interop rule 5). Decoding also accepts V2 (2-byte topic length) and IPv6
//! hosts, so that messages written by Java brokers can be read.
//!
//! ```text
//!  0 TOTALSIZE i32 | 4 MAGICCODE i32 | 8 BODYCRC i32 | 12 QUEUEID i32 | 16 FLAG i32 | 20 QUEUEOFFSET i64
//! 28 PHYSICALOFFSET i64 | 36 SYSFLAG i32 | 40 BORNTIMESTAMP i64 | 48 BORNHOST ip4 + port i32
//! 56 STORETIMESTAMP i64 | 64 STOREHOST ip4 + port i32 | 72 RECONSUMETIMES i32 | 76 PREPARED_TX_OFFSET i64
//! 84 BODYLEN i32 + body | TOPICLEN i8 + topic | PROPERTIESLEN i16 + properties          (all big-endian)
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;

use crate::error::{quote, MessageError};

/// Magic code of the V1 layout (1-byte topic length): what raftmq writes.
pub const MESSAGE_MAGIC_CODE_V1: i32 = 0xDAA3_20A7_u32 as i32;
/// Magic code of the V2 layout (2-byte topic length).
pub const MESSAGE_MAGIC_CODE_V2: i32 = 0xDAA3_20AB_u32 as i32;
/// Magic code of Java's commitlog end-of-file filler (never a message).
pub const BLANK_MAGIC_CODE: i32 = -875_286_124;

/// Byte offset of TOTALSIZE.
pub const TOTAL_SIZE_POSITION: usize = 0;
/// Byte offset of MAGICCODE.
pub const MAGIC_CODE_POSITION: usize = 4;
/// Byte offset of BODYCRC.
pub const BODY_CRC_POSITION: usize = 8;
/// Byte offset of QUEUEID.
pub const QUEUE_ID_POSITION: usize = 12;
/// Byte offset of FLAG.
pub const FLAG_POSITION: usize = 16;
/// Byte offset of QUEUEOFFSET (i64): patched by the broker when serving reads.
pub const QUEUE_OFFSET_POSITION: usize = 20;
/// Byte offset of PHYSICALOFFSET (i64): patched by the broker when serving reads.
pub const PHYSICAL_OFFSET_POSITION: usize = 28;
/// Byte offset of SYSFLAG.
pub const SYS_FLAG_POSITION: usize = 36;
/// Byte offset of BORNTIMESTAMP.
pub const BORN_TIMESTAMP_POSITION: usize = 40;
/// Byte offset of BORNHOST (IPv4 layout).
pub const BORN_HOST_POSITION: usize = 48;
/// Byte offset of STORETIMESTAMP (IPv4 born host).
pub const STORE_TIMESTAMP_POSITION: usize = 56;
/// Byte offset of STOREHOST (IPv4 layout).
pub const STORE_HOST_POSITION: usize = 64;
/// Byte offset of RECONSUMETIMES (IPv4 layout).
pub const RECONSUME_TIMES_POSITION: usize = 72;
/// Byte offset of PREPARED_TRANSACTION_OFFSET (IPv4 layout).
pub const PREPARED_TRANSACTION_OFFSET_POSITION: usize = 76;
/// Byte offset of the body length (IPv4 layout).
pub const BODY_LENGTH_POSITION: usize = 84;
/// Bytes of a V1/IPv4 stored message with empty body, topic and properties.
pub const STORED_MESSAGE_FIXED_LEN: usize = BODY_LENGTH_POSITION + 4 + 1 + 2;

/// Longest topic the V1 layout (and Java, for non-retry topics) allows.
pub const TOPIC_BYTES_MAX: usize = 127;
/// Longest property block (Java's PROPERTIES_SIZE_EXCEEDED limit; the length is an i16).
pub const PROPERTIES_BYTES_MAX: usize = i16::MAX as usize;

/// MessageSysFlag bits (reference §8.2).
pub mod sys_flag {
    /// The body is compressed; the codec is in [`COMPRESSION_TYPE_MASK`].
    pub const COMPRESSED: i32 = 0x1;
    /// Multiple tags.
    pub const MULTI_TAGS: i32 = 0x2;
    /// Not a transaction message.
    pub const TRANSACTION_NOT_TYPE: i32 = 0;
    /// Transaction half message.
    pub const TRANSACTION_PREPARED_TYPE: i32 = 0x4;
    /// Transaction commit.
    pub const TRANSACTION_COMMIT_TYPE: i32 = 0x8;
    /// Transaction rollback.
    pub const TRANSACTION_ROLLBACK_TYPE: i32 = 0xC;
    /// Born host is IPv6.
    pub const BORNHOST_V6: i32 = 0x10;
    /// Store host is IPv6.
    pub const STOREHOST_V6: i32 = 0x20;
    /// Needs unwrapping.
    pub const NEED_UNWRAP: i32 = 0x40;
    /// Inner batch.
    pub const INNER_BATCH: i32 = 0x80;
    /// Bits 8–10: the compression codec.
    pub const COMPRESSION_TYPE_MASK: i32 = 0x700;
    /// LZ4 (frame format in Java).
    pub const COMPRESSION_LZ4: i32 = 0x100;
    /// ZSTD.
    pub const COMPRESSION_ZSTD: i32 = 0x200;
    /// ZLIB (also what a compressed body with no codec bits means: older clients).
    pub const COMPRESSION_ZLIB: i32 = 0x300;

    /// The transaction bits (`TRANSACTION_*_TYPE`).
    pub fn transaction_value(flag: i32) -> i32 {
        flag & TRANSACTION_ROLLBACK_TYPE
    }

    /// `flag` with its transaction bits replaced by `transaction_type`.
    pub fn with_transaction_value(flag: i32, transaction_type: i32) -> i32 {
        (flag & !TRANSACTION_ROLLBACK_TYPE) | (transaction_type & TRANSACTION_ROLLBACK_TYPE)
    }

    /// The codec bits shifted down: 0 (old clients, zlib), 1 LZ4, 2 ZSTD, 3 ZLIB.
    pub fn compression_type(flag: i32) -> i32 {
        (flag & COMPRESSION_TYPE_MASK) >> 8
    }
}

/// Well-known property keys (`MessageConst`, reference §8.3).
pub mod property {
    /// Business keys, space-separated.
    pub const KEYS: &str = "KEYS";
    /// The tag.
    pub const TAGS: &str = "TAGS";
    /// Wait for store OK.
    pub const WAIT_STORE_MSG_OK: &str = "WAIT";
    /// Delay level 1..18.
    pub const DELAY_TIME_LEVEL: &str = "DELAY";
    /// Original topic of a retried message.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// Real destination topic of delayed / half messages.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// Real destination queue id.
    pub const REAL_QUEUE_ID: &str = "REAL_QID";
    /// `"true"` on a transaction half message.
    pub const TRANSACTION_PREPARED: &str = "TRAN_MSG";
    /// Producer group.
    pub const PRODUCER_GROUP: &str = "PGROUP";
    /// Queue min offset attached on pull.
    pub const MIN_OFFSET: &str = "MIN_OFFSET";
    /// Queue max offset attached on pull.
    pub const MAX_OFFSET: &str = "MAX_OFFSET";
    /// Original message id (retry).
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// Retry count.
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    /// Retry limit.
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    /// Client-generated message id: the id users see.
    pub const UNIQ_CLIENT_MESSAGE_ID_KEYIDX: &str = "UNIQ_KEY";
    /// Transaction id.
    pub const TRANSACTION_ID: &str = "__transactionId__";
    /// Region.
    pub const MSG_REGION: &str = "MSG_REGION";
    /// Trace switch.
    pub const TRACE_SWITCH: &str = "TRACE_ON";
    /// Sharding key (ordered messages).
    pub const SHARDING_KEY: &str = "__SHARDINGKEY";
    /// Timer delivery time (5.x).
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    /// Timer delay in seconds (5.x).
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    /// Timer delay in ms (5.x).
    pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
    /// Due time the broker fixed for a timer message (5.x); its presence marks a message already timed.
    pub const TIMER_OUT_MS: &str = "TIMER_OUT_MS";
    /// Cluster name.
    pub const CLUSTER: &str = "CLUSTER";
    /// Inner-batch message count.
    pub const INNER_NUM: &str = "INNER_NUM";
    /// Inner-batch base offset.
    pub const INNER_BASE: &str = "INNER_BASE";
    /// Origin topic of a dead-lettered message.
    pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
    /// Origin message id of a dead-lettered message.
    pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
}

// ---------------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------------

/// Separates a property name from its value.
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
/// Ends each property.
pub const PROPERTY_SEPARATOR: char = '\u{2}';

/// Appends `name\x01value\x02` for each pair to `out`.
///
/// # Errors
/// [`MessageError::InvalidProperty`] when a name is empty or a name or value contains a separator (nothing
/// is appended for that pair or any later one).
pub fn encode_properties<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut String) -> Result<(), MessageError> {
    for (name, value) in props {
        let bad = |s: &str| s.contains([NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR]);
        if name.is_empty() || bad(name) || bad(value) {
            return Err(MessageError::InvalidProperty { name: quote(name) });
        }
        out.push_str(name);
        out.push(NAME_VALUE_SEPARATOR);
        out.push_str(value);
        out.push(PROPERTY_SEPARATOR);
    }
    Ok(())
}

/// The property block for a map.
///
/// # Errors
/// As [`encode_properties`].
pub fn properties_to_string(props: &BTreeMap<String, String>) -> Result<String, MessageError> {
    let mut out = String::new();
    encode_properties(props.iter().map(|(k, v)| (k.as_str(), v.as_str())), &mut out)?;
    Ok(out)
}

/// Iterates the `(name, value)` pairs of a property block in order. Items without a name-value separator
/// or with an empty name are skipped (Java drops them too); the value runs to the end of the item, and an
/// empty value is kept.
pub fn iter_properties(block: &str) -> impl Iterator<Item = (&str, &str)> {
    block.split(PROPERTY_SEPARATOR).filter_map(|item| item.split_once(NAME_VALUE_SEPARATOR)).filter(|(name, _)| !name.is_empty())
}

/// A property block as a map; on a repeated name the last value wins (as in Java's `HashMap`).
pub fn decode_properties(block: &str) -> BTreeMap<String, String> {
    iter_properties(block).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The value of property `name` in a block (the last one when repeated), without building a map.
pub fn get_property<'a>(block: &'a str, name: &str) -> Option<&'a str> {
    iter_properties(block).filter(|(k, _)| *k == name).last().map(|(_, v)| v)
}

// ---------------------------------------------------------------------------------------------------------
// Tag hash
// ---------------------------------------------------------------------------------------------------------

/// Java's `String.hashCode()`: `h = 31 * h + c` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// RocketMQ's `tagsCode` for a TAGS value: its Java hash code widened to i64; 0 for no tag.
pub fn tags_code(tags: Option<&str>) -> i64 {
    tags.filter(|t| !t.is_empty()).map_or(0, |t| i64::from(java_string_hash(t)))
}

// ---------------------------------------------------------------------------------------------------------
// Stored messages
// ---------------------------------------------------------------------------------------------------------

/// Everything needed to encode one stored message. Borrowed, so the broker encodes straight from the
/// request without copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageToStore<'a> {
    /// Destination topic (≤ [`TOPIC_BYTES_MAX`] bytes).
    pub topic: &'a str,
    /// Destination queue.
    pub queue_id: i32,
    /// User flag.
    pub flag: i32,
    /// Offset in the consume queue.
    pub queue_offset: i64,
    /// Commitlog offset of this message (part of its offsetMsgId).
    pub physical_offset: i64,
    /// [`sys_flag`] bits; must not include the V6 host bits.
    pub sys_flag: i32,
    /// Producer's timestamp (ms).
    pub born_timestamp: i64,
    /// Producer's address.
    pub born_host: SocketAddrV4,
    /// Broker's timestamp (ms).
    pub store_timestamp: i64,
    /// Broker's address (part of the offsetMsgId).
    pub store_host: SocketAddrV4,
    /// Delivery attempts so far.
    pub reconsume_times: i32,
    /// Half-message offset for transaction ops.
    pub prepared_transaction_offset: i64,
    /// The stored body (already compressed if sys_flag says so). BODYCRC is computed over it.
    pub body: &'a [u8],
    /// The encoded property block ([`encode_properties`]).
    pub properties: &'a str,
}

/// Bytes [`encode_stored_message`] will append for `msg`.
pub fn stored_message_len(msg: &MessageToStore<'_>) -> usize {
    STORED_MESSAGE_FIXED_LEN + msg.body.len() + msg.topic.len() + msg.properties.len()
}

/// Appends the V1 stored-message encoding of `msg` to `out`; returns its length (TOTALSIZE).
///
/// # Errors
/// [`MessageError::TooLong`] for a topic over 127 bytes, properties over 32767 bytes or a message over
/// `i32::MAX`; [`MessageError::Ipv6Host`] when `sys_flag` carries a V6 host bit. Nothing is appended on error.
pub fn encode_stored_message(msg: &MessageToStore<'_>, out: &mut Vec<u8>) -> Result<usize, MessageError> {
    if msg.topic.len() > TOPIC_BYTES_MAX {
        return Err(MessageError::TooLong { field: "topic", len: msg.topic.len(), len_max: TOPIC_BYTES_MAX });
    }
    if msg.properties.len() > PROPERTIES_BYTES_MAX {
        return Err(MessageError::TooLong { field: "properties", len: msg.properties.len(), len_max: PROPERTIES_BYTES_MAX });
    }
    if msg.sys_flag & sys_flag::BORNHOST_V6 != 0 {
        return Err(MessageError::Ipv6Host { field: "born host" });
    }
    if msg.sys_flag & sys_flag::STOREHOST_V6 != 0 {
        return Err(MessageError::Ipv6Host { field: "store host" });
    }
    let total = stored_message_len(msg);
    if total > i32::MAX as usize {
        return Err(MessageError::TooLong { field: "message", len: total, len_max: i32::MAX as usize });
    }
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&(total as i32).to_be_bytes());
    out.extend_from_slice(&MESSAGE_MAGIC_CODE_V1.to_be_bytes());
    out.extend_from_slice(&(crc32fast::hash(msg.body) as i32).to_be_bytes());
    out.extend_from_slice(&msg.queue_id.to_be_bytes());
    out.extend_from_slice(&msg.flag.to_be_bytes());
    out.extend_from_slice(&msg.queue_offset.to_be_bytes());
    out.extend_from_slice(&msg.physical_offset.to_be_bytes());
    out.extend_from_slice(&msg.sys_flag.to_be_bytes());
    out.extend_from_slice(&msg.born_timestamp.to_be_bytes());
    put_host_v4(out, msg.born_host);
    out.extend_from_slice(&msg.store_timestamp.to_be_bytes());
    put_host_v4(out, msg.store_host);
    out.extend_from_slice(&msg.reconsume_times.to_be_bytes());
    out.extend_from_slice(&msg.prepared_transaction_offset.to_be_bytes());
    // Lengths checked above: body fits i32 (total does), topic ≤ 127, properties ≤ i16::MAX.
    out.extend_from_slice(&(msg.body.len() as i32).to_be_bytes());
    out.extend_from_slice(msg.body);
    out.push(msg.topic.len() as u8);
    out.extend_from_slice(msg.topic.as_bytes());
    out.extend_from_slice(&(msg.properties.len() as i16).to_be_bytes());
    out.extend_from_slice(msg.properties.as_bytes());
    debug_assert_eq!(out.len() - start, total);
    Ok(total)
}

fn put_host_v4(out: &mut Vec<u8>, host: SocketAddrV4) {
    out.extend_from_slice(&host.ip().octets());
    out.extend_from_slice(&i32::from(host.port()).to_be_bytes());
}

/// Overwrites QUEUEOFFSET and PHYSICALOFFSET of the stored message at the start of `buf`.
///
/// # Errors
/// [`MessageError::Truncated`] if `buf` is shorter than the two fields' end.
pub fn patch_offsets(buf: &mut [u8], queue_offset: i64, physical_offset: i64) -> Result<(), MessageError> {
    let end = PHYSICAL_OFFSET_POSITION + 8;
    if buf.len() < end {
        return Err(MessageError::Truncated { field: "PHYSICALOFFSET", offset: PHYSICAL_OFFSET_POSITION, needed: 8, available: buf.len() });
    }
    buf[QUEUE_OFFSET_POSITION..QUEUE_OFFSET_POSITION + 8].copy_from_slice(&queue_offset.to_be_bytes());
    buf[PHYSICAL_OFFSET_POSITION..end].copy_from_slice(&physical_offset.to_be_bytes());
    Ok(())
}

/// A stored message decoded in place: text and body borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedMessage<'a> {
    /// TOTALSIZE: bytes this message takes in the input.
    pub store_size: i32,
    /// MAGICCODE ([`MESSAGE_MAGIC_CODE_V1`] or V2).
    pub magic: i32,
    /// BODYCRC as stored.
    pub body_crc: i32,
    /// QUEUEID.
    pub queue_id: i32,
    /// FLAG.
    pub flag: i32,
    /// QUEUEOFFSET.
    pub queue_offset: i64,
    /// PHYSICALOFFSET.
    pub physical_offset: i64,
    /// SYSFLAG.
    pub sys_flag: i32,
    /// BORNTIMESTAMP.
    pub born_timestamp: i64,
    /// BORNHOST.
    pub born_host: SocketAddr,
    /// STORETIMESTAMP.
    pub store_timestamp: i64,
    /// STOREHOST.
    pub store_host: SocketAddr,
    /// RECONSUMETIMES.
    pub reconsume_times: i32,
    /// PREPARED_TRANSACTION_OFFSET.
    pub prepared_transaction_offset: i64,
    /// BODY as stored (compressed if sys_flag says so; see [`DecodedMessage::uncompressed_body`]).
    pub body: &'a [u8],
    /// TOPIC.
    pub topic: &'a str,
    /// The property block ([`iter_properties`]).
    pub properties: &'a str,
}

impl<'a> DecodedMessage<'a> {
    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&'a str> {
        get_property(self.properties, name)
    }

    /// The properties as a map.
    pub fn properties_map(&self) -> BTreeMap<String, String> {
        decode_properties(self.properties)
    }

    /// The TAGS property.
    pub fn tags(&self) -> Option<&'a str> {
        self.property(property::TAGS)
    }

    /// The UNIQ_KEY property (the client-side message id).
    pub fn uniq_key(&self) -> Option<&'a str> {
        self.property(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX)
    }

    /// The offsetMsgId: store host + physical offset.
    pub fn offset_msg_id(&self) -> OffsetMsgId {
        OffsetMsgId { store_host: self.store_host, commit_log_offset: self.physical_offset }
    }

    /// Checks BODYCRC against the body.
    ///
    /// # Errors
    /// [`MessageError::BodyCrcMismatch`].
    pub fn verify_body_crc(&self) -> Result<(), MessageError> {
        let computed = crc32fast::hash(self.body);
        if computed != self.body_crc as u32 {
            return Err(MessageError::BodyCrcMismatch { stored: self.body_crc as u32, computed });
        }
        Ok(())
    }

    /// The body, inflated if it is compressed (see [`decompress_body`]).
    ///
    /// # Errors
    /// As [`decompress_body`].
    pub fn uncompressed_body(&self, body_bytes_max: usize) -> Result<Cow<'a, [u8]>, MessageError> {
        decompress_body(self.sys_flag, self.body, body_bytes_max)
    }
}

/// A bounds-checked big-endian reader over a message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], MessageError> {
        let available = self.buf.len().saturating_sub(self.pos);
        if n > available {
            return Err(MessageError::Truncated { field, offset: self.pos, needed: n, available });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], MessageError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(field, N)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, MessageError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, MessageError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, MessageError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, MessageError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn len(&mut self, field: &'static str, len: i64) -> Result<usize, MessageError> {
        usize::try_from(len).map_err(|_| MessageError::InvalidLength { field, len })
    }

    fn text(&mut self, field: &'static str, len: usize) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.take(field, len)?).map_err(|_| MessageError::InvalidUtf8 { field })
    }

    fn host(&mut self, field: &'static str, v6: bool) -> Result<SocketAddr, MessageError> {
        let ip =
            if v6 { IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)) } else { IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)) };
        let port = self.i32(field)?;
        let port = u16::try_from(port).map_err(|_| MessageError::InvalidLength { field, len: i64::from(port) })?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Decodes the stored message at the start of `buf` (which may hold more after it: see
/// [`DecodedMessage::store_size`] and [`StoredMessages`]). Does not verify BODYCRC
/// ([`DecodedMessage::verify_body_crc`] does).
///
/// # Errors
/// [`MessageError::Truncated`], [`MessageError::BadMagic`], [`MessageError::InvalidLength`] (including a
/// TOTALSIZE that disagrees with the fields), [`MessageError::InvalidUtf8`].
pub fn decode_stored_message(buf: &[u8]) -> Result<DecodedMessage<'_>, MessageError> {
    let mut head = Reader { buf, pos: 0 };
    let store_size = head.i32("TOTALSIZE")?;
    let size = head.len("TOTALSIZE", i64::from(store_size))?;
    if size < STORED_MESSAGE_FIXED_LEN {
        return Err(MessageError::InvalidLength { field: "TOTALSIZE", len: i64::from(store_size) });
    }
    if size > buf.len() {
        return Err(MessageError::Truncated { field: "message", offset: 0, needed: size, available: buf.len() });
    }
    let mut r = Reader { buf: &buf[..size], pos: 4 };
    let magic = r.i32("MAGICCODE")?;
    if magic != MESSAGE_MAGIC_CODE_V1 && magic != MESSAGE_MAGIC_CODE_V2 {
        return Err(MessageError::BadMagic { magic });
    }
    let body_crc = r.i32("BODYCRC")?;
    let queue_id = r.i32("QUEUEID")?;
    let flag = r.i32("FLAG")?;
    let queue_offset = r.i64("QUEUEOFFSET")?;
    let physical_offset = r.i64("PHYSICALOFFSET")?;
    let sys_flag = r.i32("SYSFLAG")?;
    let born_timestamp = r.i64("BORNTIMESTAMP")?;
    let born_host = r.host("BORNHOST", sys_flag & sys_flag::BORNHOST_V6 != 0)?;
    let store_timestamp = r.i64("STORETIMESTAMP")?;
    let store_host = r.host("STOREHOST", sys_flag & sys_flag::STOREHOST_V6 != 0)?;
    let reconsume_times = r.i32("RECONSUMETIMES")?;
    let prepared_transaction_offset = r.i64("PREPARED_TRANSACTION_OFFSET")?;
    let body_len = r.i32("BODY length")?;
    let body_len = r.len("BODY", i64::from(body_len))?;
    let body = r.take("BODY", body_len)?;
    let topic_len = if magic == MESSAGE_MAGIC_CODE_V1 {
        let l = r.u8("TOPIC length")?;
        // Java reads a signed byte: a length over 127 is not a V1 message.
        if l > TOPIC_BYTES_MAX as u8 {
            return Err(MessageError::InvalidLength { field: "TOPIC", len: i64::from(l as i8) });
        }
        usize::from(l)
    } else {
        let l = r.i16("TOPIC length")?;
        r.len("TOPIC", i64::from(l))?
    };
    let topic = r.text("TOPIC", topic_len)?;
    let props_len = r.i16("PROPERTIES length")?;
    let props_len = r.len("PROPERTIES", i64::from(props_len))?;
    let properties = r.text("PROPERTIES", props_len)?;
    if r.pos != size {
        return Err(MessageError::InvalidLength { field: "TOTALSIZE", len: i64::from(store_size) });
    }
    Ok(DecodedMessage {
        store_size,
        magic,
        body_crc,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        born_host,
        store_timestamp,
        store_host,
        reconsume_times,
        prepared_transaction_offset,
        body,
        topic,
        properties,
    })
}

/// Iterates the stored messages concatenated in a PULL body. Yields an error once and then stops.
#[derive(Debug, Clone)]
pub struct StoredMessages<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> StoredMessages<'a> {
    /// Iterates `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        StoredMessages { rest: buf, failed: false }
    }
}

impl<'a> Iterator for StoredMessages<'a> {
    type Item = Result<DecodedMessage<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match decode_stored_message(self.rest) {
            Ok(m) => {
                // store_size was checked against the input when decoding.
                self.rest = &self.rest[m.store_size as usize..];
                Some(Ok(m))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// SEND_BATCH_MESSAGE bodies
// ---------------------------------------------------------------------------------------------------------

/// Bytes of a batch record with empty body and properties.
pub const BATCH_RECORD_FIXED_LEN: usize = 4 + 4 + 4 + 4 + 4 + 2;

/// One message of a SEND_BATCH_MESSAGE (320) body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMessage<'a> {
    /// FLAG (user flag).
    pub flag: i32,
    /// Body.
    pub body: &'a [u8],
    /// This message's property block (batch-level properties travel in header key `i`).
    pub properties: &'a str,
}

/// Appends one batch record, as Java's `MessageDecoder.encodeMessage` does (MAGICCODE and BODYCRC 0).
///
/// # Errors
/// [`MessageError::TooLong`] for properties over 32767 bytes or a record over `i32::MAX`.
pub fn encode_batch_message(msg: &BatchMessage<'_>, out: &mut Vec<u8>) -> Result<usize, MessageError> {
    if msg.properties.len() > PROPERTIES_BYTES_MAX {
        return Err(MessageError::TooLong { field: "properties", len: msg.properties.len(), len_max: PROPERTIES_BYTES_MAX });
    }
    let total = BATCH_RECORD_FIXED_LEN + msg.body.len() + msg.properties.len();
    if total > i32::MAX as usize {
        return Err(MessageError::TooLong { field: "message", len: total, len_max: i32::MAX as usize });
    }
    out.reserve(total);
    out.extend_from_slice(&(total as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&msg.flag.to_be_bytes());
    out.extend_from_slice(&(msg.body.len() as i32).to_be_bytes());
    out.extend_from_slice(msg.body);
    out.extend_from_slice(&(msg.properties.len() as i16).to_be_bytes());
    out.extend_from_slice(msg.properties.as_bytes());
    Ok(total)
}

/// Iterates the records of a SEND_BATCH_MESSAGE body without allocating. Yields an error once and stops.
#[derive(Debug, Clone)]
pub struct BatchMessages<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> BatchMessages<'a> {
    /// Iterates `body`.
    pub fn new(body: &'a [u8]) -> Self {
        BatchMessages { buf: body, pos: 0, failed: false }
    }

    fn read_one(&mut self) -> Result<BatchMessage<'a>, MessageError> {
        let start = self.pos;
        let mut r = Reader { buf: self.buf, pos: start };
        let total = r.i32("batch TOTALSIZE")?;
        let total_len = r.len("batch TOTALSIZE", i64::from(total))?;
        let _magic = r.i32("batch MAGICCODE")?;
        let _crc = r.i32("batch BODYCRC")?;
        let flag = r.i32("batch FLAG")?;
        let body_len = r.i32("batch BODY length")?;
        let body_len = r.len("batch BODY", i64::from(body_len))?;
        let body = r.take("batch BODY", body_len)?;
        let props_len = r.i16("batch PROPERTIES length")?;
        let props_len = r.len("batch PROPERTIES", i64::from(props_len))?;
        let properties = r.text("batch PROPERTIES", props_len)?;
        if r.pos - start != total_len {
            return Err(MessageError::InvalidLength { field: "batch TOTALSIZE", len: i64::from(total) });
        }
        self.pos = r.pos;
        Ok(BatchMessage { flag, body, properties })
    }
}

impl<'a> Iterator for BatchMessages<'a> {
    type Item = Result<BatchMessage<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() || self.failed {
            return None;
        }
        let r = self.read_one();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Decodes a whole SEND_BATCH_MESSAGE body, refusing more than `messages_max` records.
///
/// # Errors
/// The first record error, or [`MessageError::TooLong`] (field `"batch"`) past `messages_max`.
pub fn decode_batch(body: &[u8], messages_max: usize) -> Result<Vec<BatchMessage<'_>>, MessageError> {
    let mut out = Vec::new();
    for m in BatchMessages::new(body) {
        if out.len() == messages_max {
            return Err(MessageError::TooLong { field: "batch", len: messages_max + 1, len_max: messages_max });
        }
        out.push(m?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------------------

/// The zlib level Java producers use.
pub const ZLIB_LEVEL_DEFAULT: u32 = 5;

/// The body uncompressed: borrowed when `sys_flag` has no [`sys_flag::COMPRESSED`] bit; inflated when the
/// codec is zlib (codec bits 0 — older clients — or 3). Inflation stops past `body_bytes_max`.
///
/// # Errors
/// [`MessageError::UnsupportedCompression`] for LZ4/ZSTD, [`MessageError::Compression`] for a corrupt
/// stream, [`MessageError::TooLong`] when the output would exceed `body_bytes_max`.
pub fn decompress_body(flag: i32, body: &[u8], body_bytes_max: usize) -> Result<Cow<'_, [u8]>, MessageError> {
    if flag & sys_flag::COMPRESSED == 0 {
        return Ok(Cow::Borrowed(body));
    }
    match sys_flag::compression_type(flag) {
        0 | 3 => {
            let mut inflater = flate2::read::ZlibDecoder::new(body);
            let mut out: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = inflater.read(&mut chunk).map_err(|e| MessageError::Compression { reason: e.to_string() })?;
                if n == 0 {
                    break;
                }
                let len = out.len() + n;
                if len > body_bytes_max {
                    return Err(MessageError::TooLong { field: "uncompressed body", len, len_max: body_bytes_max });
                }
                if out.capacity() < len {
                    // Double, but never past the cap: an attacker's ratio cannot push the buffer beyond it.
                    let target = (out.capacity() * 2).clamp(len, body_bytes_max);
                    out.reserve_exact(target - out.len());
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Ok(Cow::Owned(out))
        }
        other => Err(MessageError::UnsupportedCompression { compression_type: other }),
    }
}

/// zlib-compresses `body` at `level` (0–9) as Java's `UtilAll.compress` does; set
/// `sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZLIB` on the message.
pub fn compress_body_zlib(body: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 2 + 16), flate2::Compression::new(level.min(9)));
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------
// offsetMsgId
// ---------------------------------------------------------------------------------------------------------

/// The broker-side message id: store host and commitlog offset, printed as uppercase hex (32 characters
/// for IPv4, 56 for IPv6). For a batch, the send response joins several with commas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffsetMsgId {
    /// The broker's address.
    pub store_host: SocketAddr,
    /// Commitlog (physical) offset.
    pub commit_log_offset: i64,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xF)] as char);
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for OffsetMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(56);
        match self.store_host.ip() {
            IpAddr::V4(ip) => push_hex(&mut s, &ip.octets()),
            IpAddr::V6(ip) => push_hex(&mut s, &ip.octets()),
        }
        push_hex(&mut s, &i32::from(self.store_host.port()).to_be_bytes());
        push_hex(&mut s, &self.commit_log_offset.to_be_bytes());
        f.write_str(&s)
    }
}

impl FromStr for OffsetMsgId {
    type Err = MessageError;

    fn from_str(s: &str) -> Result<Self, MessageError> {
        let bad = |reason| MessageError::InvalidMsgId { id: quote(s), reason };
        let (ip, rest): (IpAddr, &str) = match s.len() {
            32 => (
                IpAddr::V4(Ipv4Addr::from(parse_hex::<4>(s.get(..8).ok_or_else(|| bad("not ASCII"))?).ok_or_else(|| bad("not hex"))?)),
                &s[8..],
            ),
            56 => (
                IpAddr::V6(Ipv6Addr::from(parse_hex::<16>(s.get(..32).ok_or_else(|| bad("not ASCII"))?).ok_or_else(|| bad("not hex"))?)),
                &s[32..],
            ),
            _ => return Err(bad("expected 32 (IPv4) or 56 (IPv6) hex characters")),
        };
        let port = i32::from_be_bytes(parse_hex::<4>(rest.get(..8).ok_or_else(|| bad("not ASCII"))?).ok_or_else(|| bad("not hex"))?);
        let port = u16::try_from(port).map_err(|_| bad("port out of range"))?;
        let offset = i64::from_be_bytes(parse_hex::<8>(rest.get(8..).ok_or_else(|| bad("not ASCII"))?).ok_or_else(|| bad("not hex"))?);
        Ok(OffsetMsgId { store_host: SocketAddr::new(ip, port), commit_log_offset: offset })
    }
}

/// The offsetMsgId string for a store host and commitlog offset.
pub fn encode_offset_msg_id(store_host: SocketAddr, commit_log_offset: i64) -> String {
    OffsetMsgId { store_host, commit_log_offset }.to_string()
}

/// Parses an offsetMsgId (either hex case).
///
/// # Errors
/// [`MessageError::InvalidMsgId`].
pub fn decode_offset_msg_id(id: &str) -> Result<OffsetMsgId, MessageError> {
    id.parse()
}

// ---------------------------------------------------------------------------------------------------------
// UNIQ_KEY
// ---------------------------------------------------------------------------------------------------------

/// Generates UNIQ_KEY ids in the Java client's format (`MessageClientIDSetter`): 16 bytes as 32 uppercase
/// hex characters,
///
/// ```text
/// ip (4) | pid, low 16 bits (2) | per-process seed (4; Java: the class loader's hash) |
/// ms since the start of the current month (i32) | counter (u16, wrapping)
/// ```
///
/// As in Java, the millisecond field is a wrapping `i32` cast: from about day 25 of a month it reads negative.
///
/// Pure: the caller passes the clock. Java computes the month start in the JVM's time zone; this uses UTC,
/// which only shifts the time part (ids stay unique per process and readers only use it as a hint).
#[derive(Debug, Clone)]
pub struct UniqIdGenerator {
    prefix: String,
    counter: u16,
    month_start_ms: i64,
    next_month_start_ms: i64,
}

impl UniqIdGenerator {
    /// A generator for a process at `ip` with id `pid` and a random `seed`.
    pub fn new(ip: Ipv4Addr, pid: u32, seed: i32) -> Self {
        let mut fixed = [0u8; 10];
        fixed[..4].copy_from_slice(&ip.octets());
        fixed[4..6].copy_from_slice(&((pid & 0xFFFF) as u16).to_be_bytes());
        fixed[6..].copy_from_slice(&seed.to_be_bytes());
        let mut prefix = String::with_capacity(32);
        push_hex(&mut prefix, &fixed);
        UniqIdGenerator { prefix, counter: 0, month_start_ms: 0, next_month_start_ms: i64::MIN }
    }

    /// The next id at wall-clock time `now_ms` (Unix ms).
    pub fn next_id(&mut self, now_ms: i64) -> String {
        if now_ms >= self.next_month_start_ms || now_ms < self.month_start_ms {
            let (start, next) = month_bounds_utc(now_ms);
            self.month_start_ms = start;
            self.next_month_start_ms = next;
        }
        let since = now_ms.saturating_sub(self.month_start_ms) as i32;
        let mut id = String::with_capacity(32);
        id.push_str(&self.prefix);
        push_hex(&mut id, &since.to_be_bytes());
        push_hex(&mut id, &self.counter.to_be_bytes());
        self.counter = self.counter.wrapping_add(1);
        id
    }
}

/// The parts of an IPv4 UNIQ_KEY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniqIdParts {
    /// The client's IPv4 address.
    pub ip: Ipv4Addr,
    /// Low 16 bits of the client's pid.
    pub pid_low: u16,
    /// Per-process seed.
    pub seed: i32,
    /// Milliseconds since the start of the month the id was made in, as Java's wrapping `i32` cast wrote it
    /// (read it as `u32`).
    pub month_ms: i32,
    /// Counter.
    pub counter: u16,
}

/// Splits a 32-character UNIQ_KEY into its parts.
///
/// # Errors
/// [`MessageError::InvalidMsgId`] for anything but 32 hex characters.
pub fn parse_uniq_id(id: &str) -> Result<UniqIdParts, MessageError> {
    let b = parse_hex::<16>(id).ok_or_else(|| MessageError::InvalidMsgId { id: quote(id), reason: "expected 32 hex characters" })?;
    Ok(UniqIdParts {
        ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        pid_low: u16::from_be_bytes([b[4], b[5]]),
        seed: i32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        month_ms: i32::from_be_bytes([b[10], b[11], b[12], b[13]]),
        counter: u16::from_be_bytes([b[14], b[15]]),
    })
}

const MS_PER_DAY: i64 = 86_400_000;

/// Start of the UTC month containing `ms` and start of the next one (Unix ms).
fn month_bounds_utc(ms: i64) -> (i64, i64) {
    let days = ms.div_euclid(MS_PER_DAY);
    let (y, m, _) = civil_from_days(days);
    let start = days_from_civil(y, m, 1) * MS_PER_DAY;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (start, days_from_civil(ny, nm, 1) * MS_PER_DAY)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Joins offsetMsgIds with commas, as the SEND_BATCH response's `msgId` does.
pub fn join_msg_ids<'a>(ids: impl IntoIterator<Item = &'a OffsetMsgId>) -> String {
    let mut out = String::new();
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{id}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(topic: &'a str, body: &'a [u8], properties: &'a str) -> MessageToStore<'a> {
        MessageToStore {
            topic,
            queue_id: 3,
            flag: 7,
            queue_offset: 42,
            physical_offset: 0x1234_5678,
            sys_flag: 0,
            born_timestamp: 1_700_000_000_000,
            born_host: "10.0.0.5:50001".parse().unwrap(),
            store_timestamp: 1_700_000_000_123,
            store_host: "10.0.0.1:10911".parse().unwrap(),
            reconsume_times: 1,
            prepared_transaction_offset: 0,
            body,
            properties,
        }
    }

    #[test]
    fn encode_decode_and_positions() {
        let mut props = String::new();
        encode_properties([("TAGS", "TagA"), ("KEYS", "k1 k2"), ("UNIQ_KEY", "ABC")], &mut props).unwrap();
        let msg = sample("TopicTest", b"hello", &props);
        let mut buf = vec![0xEE];
        let n = encode_stored_message(&msg, &mut buf).unwrap();
        assert_eq!(n, buf.len() - 1);
        let enc = &buf[1..];
        assert_eq!(&enc[QUEUE_OFFSET_POSITION..QUEUE_OFFSET_POSITION + 8], &42i64.to_be_bytes());
        assert_eq!(&enc[PHYSICAL_OFFSET_POSITION..PHYSICAL_OFFSET_POSITION + 8], &0x1234_5678i64.to_be_bytes());
        assert_eq!(&enc[STORE_TIMESTAMP_POSITION..STORE_TIMESTAMP_POSITION + 8], &1_700_000_000_123i64.to_be_bytes());
        assert_eq!(&enc[BODY_LENGTH_POSITION..BODY_LENGTH_POSITION + 4], &5i32.to_be_bytes());
        assert_eq!(&enc[4..8], &[0xDA, 0xA3, 0x20, 0xA7]);
        let d = decode_stored_message(enc).unwrap();
        d.verify_body_crc().unwrap();
        assert_eq!(d.topic, "TopicTest");
        assert_eq!(d.body, b"hello");
        assert_eq!(d.tags(), Some("TagA"));
        assert_eq!(d.property("KEYS"), Some("k1 k2"));
        assert_eq!(d.uniq_key(), Some("ABC"));
        assert_eq!(d.born_host, "10.0.0.5:50001".parse::<SocketAddr>().unwrap());
        assert_eq!(d.offset_msg_id().to_string(), "0A00000100002A9F0000000012345678");

        let mut patched = enc.to_vec();
        patch_offsets(&mut patched, 99, 1000).unwrap();
        let p = decode_stored_message(&patched).unwrap();
        assert_eq!((p.queue_offset, p.physical_offset), (99, 1000));
    }

    #[test]
    fn encode_limits() {
        let long = "t".repeat(128);
        let mut out = Vec::new();
        assert!(matches!(encode_stored_message(&sample(&long, b"", ""), &mut out), Err(MessageError::TooLong { field: "topic", .. })));
        let props = "x".repeat(PROPERTIES_BYTES_MAX + 1);
        assert!(matches!(
            encode_stored_message(&sample("T", b"", &props), &mut out),
            Err(MessageError::TooLong { field: "properties", .. })
        ));
        let mut m = sample("T", b"", "");
        m.sys_flag = sys_flag::BORNHOST_V6;
        assert!(matches!(encode_stored_message(&m, &mut out), Err(MessageError::Ipv6Host { .. })));
        assert!(out.is_empty());
        assert!(encode_stored_message(&sample(&"t".repeat(127), b"", ""), &mut out).is_ok());
    }

    #[test]
    fn decode_rejects_inconsistent_sizes() {
        let mut buf = Vec::new();
        encode_stored_message(&sample("T", b"abc", ""), &mut buf).unwrap();
        // TOTALSIZE larger than the fields, with the bytes present.
        let mut longer = buf.clone();
        longer.push(0);
        let size = (buf.len() + 1) as i32;
        longer[..4].copy_from_slice(&size.to_be_bytes());
        assert!(matches!(decode_stored_message(&longer), Err(MessageError::InvalidLength { field: "TOTALSIZE", .. })));
        // Truncated input.
        assert!(matches!(decode_stored_message(&buf[..buf.len() - 1]), Err(MessageError::Truncated { .. })));
        // A TOTALSIZE below the fixed part (found by the mutation test: it once underflowed the reader).
        for size in [0i32, 3, 4, 90] {
            let mut small = buf.clone();
            small[..4].copy_from_slice(&size.to_be_bytes());
            assert!(matches!(decode_stored_message(&small), Err(MessageError::InvalidLength { field: "TOTALSIZE", .. })), "{size}");
        }
        // Bad magic.
        let mut bad = buf.clone();
        bad[4] = 0;
        assert!(matches!(decode_stored_message(&bad), Err(MessageError::BadMagic { .. })));
        // Corrupt body is caught by the CRC check.
        let mut flipped = buf.clone();
        flipped[BODY_LENGTH_POSITION + 4] ^= 1;
        assert!(matches!(decode_stored_message(&flipped).unwrap().verify_body_crc(), Err(MessageError::BodyCrcMismatch { .. })));
    }

    #[test]
    fn decodes_v2_and_ipv6_layouts() {
        // Hand-built V2 message with IPv6 born and store hosts, as a Java broker may write.
        let body = b"x";
        let topic = b"T6";
        let props = b"TAGS\x01a\x02";
        let sys = sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6;
        let total = 4 + 4 + 4 + 4 + 4 + 8 + 8 + 4 + 8 + 20 + 8 + 20 + 4 + 8 + 4 + body.len() + 2 + topic.len() + 2 + props.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(total as i32).to_be_bytes());
        b.extend_from_slice(&MESSAGE_MAGIC_CODE_V2.to_be_bytes());
        b.extend_from_slice(&(crc32fast::hash(body) as i32).to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&6i64.to_be_bytes());
        b.extend_from_slice(&sys.to_be_bytes());
        b.extend_from_slice(&7i64.to_be_bytes());
        b.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b.extend_from_slice(&1234i32.to_be_bytes());
        b.extend_from_slice(&8i64.to_be_bytes());
        b.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b.extend_from_slice(&10911i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&(body.len() as i32).to_be_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        b.extend_from_slice(topic);
        b.extend_from_slice(&(props.len() as i16).to_be_bytes());
        b.extend_from_slice(props);
        assert_eq!(b.len(), total);
        let d = decode_stored_message(&b).unwrap();
        assert_eq!(d.topic, "T6");
        assert_eq!(d.store_host, "[::1]:10911".parse::<SocketAddr>().unwrap());
        let id = d.offset_msg_id().to_string();
        assert_eq!(id.len(), 56);
        assert_eq!(decode_offset_msg_id(&id).unwrap(), d.offset_msg_id());
    }

    #[test]
    fn stored_messages_iterate_a_pull_body() {
        let mut buf = Vec::new();
        for i in 0..3 {
            let mut m = sample("T", b"body", "");
            m.queue_offset = i;
            encode_stored_message(&m, &mut buf).unwrap();
        }
        let offsets: Vec<i64> = StoredMessages::new(&buf).map(|m| m.unwrap().queue_offset).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
        let mut it = StoredMessages::new(&buf[..buf.len() - 1]);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn properties_follow_java() {
        let block = "A\u{1}1\u{2}B\u{1}\u{2}junk\u{2}\u{1}x\u{2}A\u{1}2\u{2}C\u{1}c\u{1}d\u{2}";
        let pairs: Vec<_> = iter_properties(block).collect();
        assert_eq!(pairs, vec![("A", "1"), ("B", ""), ("A", "2"), ("C", "c\u{1}d")]);
        assert_eq!(get_property(block, "A"), Some("2"));
        assert_eq!(decode_properties(block)["A"], "2");
        let mut s = String::new();
        assert!(encode_properties([("bad\u{2}", "v")], &mut s).is_err());
        assert!(encode_properties([("", "v")], &mut s).is_err());
        assert!(encode_properties([("k", "v\u{1}")], &mut s).is_err());
    }

    #[test]
    fn tag_hash_matches_java() {
        // Values of Java's "…".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("TagA"), 2_598_919);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        // Non-BMP characters hash as two UTF-16 units.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
        assert_eq!(tags_code(Some("TagA")), 2_598_919);
        assert_eq!(tags_code(None), 0);
    }

    #[test]
    fn offset_msg_id_round_trip_and_errors() {
        let id = OffsetMsgId { store_host: "192.168.1.2:10911".parse().unwrap(), commit_log_offset: 1 << 40 };
        let s = id.to_string();
        assert_eq!(s, "C0A8010200002A9F0000010000000000");
        assert_eq!(decode_offset_msg_id(&s).unwrap(), id);
        assert_eq!(decode_offset_msg_id(&s.to_lowercase()).unwrap(), id);
        assert!(decode_offset_msg_id("XYZ").is_err());
        assert!(decode_offset_msg_id("G0A8010200002A9F0000010000000000").is_err());
        assert!(decode_offset_msg_id("C0A80102FFFFFFFF0000010000000000").is_err());
        assert!(decode_offset_msg_id("é0A8010200002A9F000001000000000").is_err());
        assert_eq!(join_msg_ids([&id, &id]), format!("{s},{s}"));
    }

    #[test]
    fn uniq_id_layout() {
        let mut g = UniqIdGenerator::new(Ipv4Addr::new(10, 0, 0, 5), 0x0001_2345, 0x0BAD_F00D);
        // 2023-11-14T22:13:20Z; the month started 2023-11-01T00:00:00Z = 1698796800000.
        let now = 1_700_000_000_000;
        let a = g.next_id(now);
        let b = g.next_id(now);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        let p = parse_uniq_id(&a).unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(p.pid_low, 0x2345);
        assert_eq!(p.seed, 0x0BAD_F00D);
        assert_eq!(i64::from(p.month_ms), now - 1_698_796_800_000);
        assert_eq!(p.counter, 0);
        assert_eq!(parse_uniq_id(&b).unwrap().counter, 1);
        assert_eq!(&a[..20], "0A00000523450BADF00D");
    }

    #[test]
    fn month_bounds() {
        assert_eq!(month_bounds_utc(0), (0, 31 * MS_PER_DAY));
        // 2024-02 (leap year): 2024-02-01 = 19754 days, 2024-03-01 = 19783 days.
        let feb = 19_760 * MS_PER_DAY;
        assert_eq!(month_bounds_utc(feb), (19_754 * MS_PER_DAY, 19_783 * MS_PER_DAY));
        // December rolls over the year; negative times work.
        let (s, n) = month_bounds_utc(-1);
        assert_eq!(n, 0);
        assert_eq!(s, -31 * MS_PER_DAY);
        for d in [-800_000i64, -1, 0, 1, 19_783, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn batch_round_trip() {
        let msgs = [
            BatchMessage { flag: 0, body: b"one", properties: "KEYS\u{1}a\u{2}" },
            BatchMessage { flag: 5, body: b"", properties: "" },
            BatchMessage { flag: -1, body: &[0, 1, 2], properties: "UNIQ_KEY\u{1}X\u{2}" },
        ];
        let mut body = Vec::new();
        for m in &msgs {
            encode_batch_message(m, &mut body).unwrap();
        }
        assert_eq!(decode_batch(&body, 10).unwrap(), msgs);
        assert!(matches!(decode_batch(&body, 2), Err(MessageError::TooLong { field: "batch", .. })));
        assert!(decode_batch(&body[..body.len() - 1], 10).is_err());
        assert_eq!(decode_batch(&[], 10).unwrap(), vec![]);
    }

    #[test]
    fn zlib_round_trip_and_limits() {
        let body = b"hello hello hello hello hello hello".repeat(100);
        let z = compress_body_zlib(&body, ZLIB_LEVEL_DEFAULT);
        assert!(z.len() < body.len());
        let flag = sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZLIB;
        assert_eq!(decompress_body(flag, &z, body.len()).unwrap().as_ref(), &body[..]);
        // Old clients set COMPRESSED without codec bits: zlib.
        assert_eq!(decompress_body(sys_flag::COMPRESSED, &z, body.len()).unwrap().as_ref(), &body[..]);
        assert!(matches!(decompress_body(flag, &z, body.len() - 1), Err(MessageError::TooLong { .. })));
        assert!(matches!(
            decompress_body(sys_flag::COMPRESSED | sys_flag::COMPRESSION_LZ4, &z, 1 << 20),
            Err(MessageError::UnsupportedCompression { .. })
        ));
        assert!(matches!(decompress_body(flag, b"not zlib", 1 << 20), Err(MessageError::Compression { .. })));
        assert!(matches!(decompress_body(0, b"plain", 0).unwrap(), Cow::Borrowed(b"plain")));
    }

    #[test]
    fn sys_flag_helpers() {
        let f =
            sys_flag::with_transaction_value(sys_flag::COMPRESSED | sys_flag::TRANSACTION_PREPARED_TYPE, sys_flag::TRANSACTION_COMMIT_TYPE);
        assert_eq!(sys_flag::transaction_value(f), sys_flag::TRANSACTION_COMMIT_TYPE);
        assert_eq!(f & sys_flag::COMPRESSED, sys_flag::COMPRESSED);
        assert_eq!(sys_flag::compression_type(sys_flag::COMPRESSION_ZSTD | 1), 2);
    }
}
