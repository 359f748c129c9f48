//! Pure codec for RocketMQ remoting frames (reference §1): [`RemotingCommand`] ↔ bytes, and
//! [`RemotingCodec`] for `tokio_util::codec::Framed`. No I/O; callers own the buffers and the sockets.
//!
//! ```text
//! i32 length                       = 4 + headerLen + bodyLen (big-endian, excludes itself)
//! i32 (serializeType << 24) | headerLen
//! header: JSON object (type 0) or ROCKETMQ binary (type 1)
//! body
//! ```
//!
//! Decoding accepts both header kinds and parses JSON leniently (interop rule 3): `extFields` values may be
//! strings, numbers, booleans or `null`, `extFields` itself may be `null` or absent, unknown keys are ignored
//! and a trailing newline is fine. Encoding a response always writes a JSON header with string values
//! (interop rules 1 and 2), whatever the request used; requests are written in their `serialize_type`.
//! The JSON header codec is hand-written (submodule `json`): one header per message makes it a hot path.
//!
//! Callers: the broker and nameserver connection loops (through [`RemotingCodec`]) and raftmq's client.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codes::{flag, version, LanguageCode, RequestCode, ResponseCode};
use crate::error::{RemotingError, Result};
use crate::header::CommandHeader;

mod json;

/// The custom header fields of a command: Java's `Map<String, String> extFields`. Sorted, so encoding is
/// deterministic.
pub type ExtFields = BTreeMap<String, String>;

/// Default cap on a whole frame, length prefix included: Java's `com.rocketmq.remoting.frameMaxLength`.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix plus the header-length word.
pub const FRAME_PREFIX_LEN: usize = 8;

/// Largest header length the 24-bit header-length field can express.
pub const HEADER_BYTES_MAX: usize = 0x00FF_FFFF;

/// Smallest read buffer the decoder grows to, so one socket read can bring in many small frames.
pub const READ_BUFFER_MIN: usize = 64 * 1024;

/// Most `extFields` entries a decoded header may carry. Real headers carry fewer than 30; the cap keeps a
/// hostile frame of tiny entries from costing many times its size in map nodes.
pub const EXT_FIELDS_MAX: usize = 256;

/// The `version` raftmq writes in the commands it creates. raftmq speaks the 4.x protocol, so it claims the
/// last 4.x release rather than a 5.x version whose features clients might then try.
pub const VERSION_DEFAULT: i32 = version::V4_9_4;

/// How a command's header is serialised (the top byte of the header-length word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SerializeType {
    /// A JSON object (type 0): what every client understands.
    #[default]
    Json,
    /// The compact binary form of `RocketMQSerializable` (type 1).
    RocketMq,
}

impl SerializeType {
    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            SerializeType::Json => 0,
            SerializeType::RocketMq => 1,
        }
    }

    /// Parses the wire byte.
    ///
    /// # Errors
    /// [`RemotingError::UnknownSerializeType`] for anything but 0 and 1.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(SerializeType::Json),
            1 => Ok(SerializeType::RocketMq),
            other => Err(RemotingError::UnknownSerializeType { serialize_type: other }),
        }
    }

    fn json_name(self) -> &'static str {
        match self {
            SerializeType::Json => "JSON",
            SerializeType::RocketMq => "ROCKETMQ",
        }
    }
}

/// One remoting command: a request, a oneway request or a response.
#[derive(Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    /// Request code (requests) or response code (responses); see [`RequestCode`] and [`ResponseCode`].
    pub code: i32,
    /// The sender's client language.
    pub language: LanguageCode,
    /// The sender's `MQVersion` ordinal.
    pub version: i32,
    /// Request id; a response copies its request's.
    pub opaque: i32,
    /// Bit field: [`flag::RESPONSE`], [`flag::ONEWAY`].
    pub flag: i32,
    /// Error text on responses.
    pub remark: Option<String>,
    /// Custom header fields.
    pub ext_fields: ExtFields,
    /// The body (zero-copy slice of the received frame).
    pub body: Bytes,
    /// How the header was (or will be) serialised. Responses are always encoded as JSON.
    pub serialize_type: SerializeType,
}

impl fmt::Debug for RemotingCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RemotingCommand");
        if self.is_response() {
            d.field("code", &ResponseCode(self.code));
        } else {
            d.field("code", &RequestCode(self.code));
        }
        d.field("language", &self.language)
            .field("version", &self.version)
            .field("opaque", &self.opaque)
            .field("flag", &self.flag)
            .field("remark", &self.remark)
            .field("ext_fields", &self.ext_fields)
            .field("body_len", &self.body.len())
            .field("serialize_type", &self.serialize_type)
            .finish()
    }
}

impl RemotingCommand {
    fn new(code: i32, flag: i32) -> Self {
        RemotingCommand {
            code,
            language: LanguageCode::Java,
            version: VERSION_DEFAULT,
            opaque: 0,
            flag,
            remark: None,
            ext_fields: ExtFields::new(),
            body: Bytes::new(),
            serialize_type: SerializeType::Json,
        }
    }

    /// A request with `code` and `opaque`. Language `JAVA` (the one name every peer knows), version
    /// [`VERSION_DEFAULT`], JSON header.
    pub fn request(code: RequestCode, opaque: i32) -> Self {
        let mut cmd = Self::new(code.0, 0);
        cmd.opaque = opaque;
        cmd
    }

    /// A oneway request: the receiver does not answer.
    pub fn oneway(code: RequestCode, opaque: i32) -> Self {
        Self::request(code, opaque).mark_oneway()
    }

    /// A response with `code` and `remark`. Its opaque is 0 until set with [`RemotingCommand::with_opaque`]
    /// or [`RemotingCommand::for_request`]; prefer [`RemotingCommand::response_to`].
    pub fn response(code: ResponseCode, remark: Option<String>) -> Self {
        let mut cmd = Self::new(code.0, flag::RESPONSE);
        cmd.remark = remark;
        cmd
    }

    /// The response to `request`: copies its opaque.
    pub fn response_to(request: &RemotingCommand, code: ResponseCode, remark: Option<String>) -> Self {
        Self::response(code, remark).for_request(request)
    }

    /// A `SUCCESS` response to `request`.
    pub fn success_to(request: &RemotingCommand) -> Self {
        Self::response_to(request, ResponseCode::SUCCESS, None)
    }

    /// The `REQUEST_CODE_NOT_SUPPORTED` answer Java servers give to an unknown code.
    pub fn not_supported_to(request: &RemotingCommand) -> Self {
        let remark = format!("request type {} not supported", request.code);
        Self::response_to(request, ResponseCode::REQUEST_CODE_NOT_SUPPORTED, Some(remark))
    }

    /// Sets the opaque to `request`'s, so the peer matches this response to it.
    pub fn for_request(mut self, request: &RemotingCommand) -> Self {
        self.opaque = request.opaque;
        self
    }

    /// Sets the opaque.
    pub fn with_opaque(mut self, opaque: i32) -> Self {
        self.opaque = opaque;
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the remark.
    pub fn with_remark(mut self, remark: impl Into<String>) -> Self {
        self.remark = Some(remark.into());
        self
    }

    /// Adds one `extFields` entry.
    pub fn with_ext(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.ext_fields.insert(key.into(), value.into());
        self
    }

    /// Writes a typed header into `extFields` (keeping entries it does not set).
    pub fn with_header<H: CommandHeader>(mut self, header: &H) -> Self {
        header.write_ext_fields(&mut self.ext_fields);
        self
    }

    /// Sets the header serialisation for a request (responses are always JSON).
    pub fn with_serialize_type(mut self, serialize_type: SerializeType) -> Self {
        self.serialize_type = serialize_type;
        self
    }

    /// Marks the command oneway.
    pub fn mark_oneway(mut self) -> Self {
        self.flag |= flag::ONEWAY;
        self
    }

    /// True for a response (`flag & 1`). Such frames from a client answer a broker-initiated request and must
    /// never be dispatched as requests (interop rule 11).
    pub fn is_response(&self) -> bool {
        self.flag & flag::RESPONSE != 0
    }

    /// True for a oneway request (`flag & 2`): it gets no answer.
    pub fn is_oneway(&self) -> bool {
        self.flag & flag::ONEWAY != 0
    }

    /// The code read as a request code.
    pub fn request_code(&self) -> RequestCode {
        RequestCode(self.code)
    }

    /// The code read as a response code.
    pub fn response_code(&self) -> ResponseCode {
        ResponseCode(self.code)
    }

    /// Parses the typed header `H` from `extFields`.
    ///
    /// # Errors
    /// [`RemotingError::MissingField`] / [`RemotingError::InvalidField`] naming the field.
    pub fn decode_header<H: CommandHeader>(&self) -> Result<H> {
        H::from_ext_fields(&self.ext_fields)
    }

    /// The serialisation this command is encoded with: JSON for responses, else `serialize_type`.
    pub fn encoding(&self) -> SerializeType {
        if self.is_response() {
            SerializeType::Json
        } else {
            self.serialize_type
        }
    }

    /// Serialises the header alone, in [`RemotingCommand::encoding`].
    ///
    /// # Errors
    /// [`RemotingError::Unencodable`] when a value does not fit the binary header's fields.
    pub fn encode_header(&self) -> Result<Vec<u8>> {
        match self.encoding() {
            SerializeType::Json => self.encode_json_header(),
            SerializeType::RocketMq => self.encode_binary_header(),
        }
    }

    fn encode_json_header(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(json::size_hint(self));
        json::write_header(self, &mut out);
        Ok(out)
    }

    fn encode_binary_header(&self) -> Result<Vec<u8>> {
        let code = i16::try_from(self.code).map_err(|_| RemotingError::Unencodable {
            field: "code",
            reason: format!("{} does not fit the binary header's i16", self.code),
        })?;
        let version = i16::try_from(self.version).map_err(|_| RemotingError::Unencodable {
            field: "version",
            reason: format!("{} does not fit the binary header's i16", self.version),
        })?;
        let remark = self.remark.as_deref().unwrap_or("");
        let remark_len = len_i32("remark", remark.len())?;
        let mut ext_len = 0usize;
        for (k, v) in &self.ext_fields {
            if k.len() > i16::MAX as usize {
                return Err(RemotingError::Unencodable { field: "extFields", reason: format!("key of {} bytes exceeds i16", k.len()) });
            }
            ext_len += 2 + k.len() + 4 + v.len();
        }
        let ext_len_i32 = len_i32("extFields", ext_len)?;
        let mut out = Vec::with_capacity(2 + 1 + 2 + 4 + 4 + 4 + remark.len() + 4 + ext_len);
        out.extend_from_slice(&code.to_be_bytes());
        out.push(self.language.code());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&self.opaque.to_be_bytes());
        out.extend_from_slice(&self.flag.to_be_bytes());
        out.extend_from_slice(&remark_len.to_be_bytes());
        out.extend_from_slice(remark.as_bytes());
        out.extend_from_slice(&ext_len_i32.to_be_bytes());
        for (k, v) in &self.ext_fields {
            // Lengths checked above: keys fit i16, the whole map fits i32.
            out.extend_from_slice(&(k.len() as i16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        Ok(out)
    }

    /// Appends the whole frame (length prefix, header-length word, header, body) to `dst`.
    ///
    /// # Errors
    /// [`RemotingError::FrameTooLarge`] when the frame would exceed `frame_bytes_max` (nothing is written);
    /// [`RemotingError::Unencodable`] as for [`RemotingCommand::encode_header`].
    pub fn encode(&self, dst: &mut BytesMut, frame_bytes_max: usize) -> Result<()> {
        match self.encoding() {
            SerializeType::Json => self.encode_json_frame(dst, frame_bytes_max),
            SerializeType::RocketMq => {
                let header = self.encode_binary_header()?;
                let frame_bytes = Self::frame_bytes(header.len(), self.body.len(), frame_bytes_max)?;
                dst.reserve(frame_bytes);
                dst.put_slice(&Self::prefix(SerializeType::RocketMq, frame_bytes, header.len()));
                dst.put_slice(&header);
                dst.put_slice(&self.body);
                Ok(())
            }
        }
    }

    /// Writes the JSON header straight into `dst` behind a placeholder prefix (no intermediate buffer), then
    /// fills the prefix in once the header's length is known. On error `dst` is truncated back to its old
    /// length, so nothing is written.
    fn encode_json_frame(&self, dst: &mut BytesMut, frame_bytes_max: usize) -> Result<()> {
        let start = dst.len();
        let hint = FRAME_PREFIX_LEN + json::size_hint(self);
        // Room for the body too, unless the body alone already breaks the cap (then the frame is refused).
        dst.reserve(if hint.saturating_add(self.body.len()) <= frame_bytes_max { hint + self.body.len() } else { hint });
        dst.put_slice(&[0; FRAME_PREFIX_LEN]);
        json::write_header(self, dst);
        let header_len = dst.len() - start - FRAME_PREFIX_LEN;
        let frame_bytes = match Self::frame_bytes(header_len, self.body.len(), frame_bytes_max) {
            Ok(frame_bytes) => frame_bytes,
            Err(e) => {
                dst.truncate(start);
                return Err(e);
            }
        };
        dst[start..start + FRAME_PREFIX_LEN].copy_from_slice(&Self::prefix(SerializeType::Json, frame_bytes, header_len));
        dst.put_slice(&self.body);
        Ok(())
    }

    /// The whole frame's size, after checking it against the 24-bit header length, `frame_bytes_max` and the
    /// i32 length prefix.
    fn frame_bytes(header_len: usize, body_len: usize, frame_bytes_max: usize) -> Result<usize> {
        if header_len > HEADER_BYTES_MAX {
            return Err(RemotingError::Unencodable { field: "header", reason: format!("{header_len} bytes exceed the 24-bit length") });
        }
        let frame_bytes = FRAME_PREFIX_LEN as u64 + header_len as u64 + body_len as u64;
        if frame_bytes > frame_bytes_max as u64 || frame_bytes > i32::MAX as u64 {
            return Err(RemotingError::FrameTooLarge { frame_bytes, frame_bytes_max });
        }
        Ok(frame_bytes as usize)
    }

    /// The length prefix and header-length word of a frame checked by [`RemotingCommand::frame_bytes`].
    fn prefix(serialize_type: SerializeType, frame_bytes: usize, header_len: usize) -> [u8; FRAME_PREFIX_LEN] {
        // Fit: frame_bytes <= i32::MAX and header_len <= 24 bits were checked.
        let length = ((frame_bytes - 4) as i32).to_be_bytes();
        let word = ((u32::from(serialize_type.code()) << 24) | header_len as u32).to_be_bytes();
        [length[0], length[1], length[2], length[3], word[0], word[1], word[2], word[3]]
    }

    /// The frame as one buffer, with the default cap.
    ///
    /// # Errors
    /// As [`RemotingCommand::encode`].
    pub fn to_bytes(&self) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf, FRAME_BYTES_MAX_DEFAULT)?;
        Ok(buf.freeze())
    }

    /// Decodes one frame from the front of `src`, consuming it. `Ok(None)` when more bytes are needed; then
    /// `src` grows with the bytes that arrived, never to the announced length at once: see
    /// [`partial_frame_capacity`]. A length prefix over `frame_bytes_max` is refused before anything grows.
    ///
    /// # Errors
    /// [`RemotingError::FrameTooLarge`] / [`RemotingError::FrameLengthInvalid`] for a bad length prefix
    /// (nothing consumed; the stream cannot be resynchronised). Header errors after the whole frame arrived
    /// (the frame is consumed).
    pub fn decode(src: &mut BytesMut, frame_bytes_max: usize) -> Result<Option<RemotingCommand>> {
        let Some(prefix) = src.get(..4) else { return Ok(None) };
        let length = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if length < 4 {
            return Err(RemotingError::FrameLengthInvalid { length });
        }
        let frame_bytes = 4 + length as u64;
        if frame_bytes > frame_bytes_max as u64 {
            return Err(RemotingError::FrameTooLarge { frame_bytes, frame_bytes_max });
        }
        let frame_bytes = frame_bytes as usize;
        if src.len() < frame_bytes {
            grow_for_partial_frame(src, frame_bytes, frame_bytes_max);
            return Ok(None);
        }
        let mut frame = src.split_to(frame_bytes).freeze();
        frame.advance(4);
        Self::decode_frame(frame).map(Some)
    }

    /// Decodes a frame without its length prefix (header-length word, header, body), as Java's
    /// `RemotingCommand.decode` does after the frame decoder stripped the prefix. The body is a zero-copy
    /// slice of `frame`.
    ///
    /// # Errors
    /// Header-length, serialize-type and header-content errors.
    pub fn decode_frame(frame: Bytes) -> Result<RemotingCommand> {
        let frame_len = frame.len();
        let Some(word) = frame.get(..4) else {
            return Err(RemotingError::HeaderLengthInvalid { header_len: 0, frame_len });
        };
        let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        let serialize_type = SerializeType::from_code((word >> 24) as u8)?;
        let header_len = (word & 0x00FF_FFFF) as usize;
        if header_len > frame_len - 4 {
            return Err(RemotingError::HeaderLengthInvalid { header_len, frame_len });
        }
        let header = &frame[4..4 + header_len];
        let mut cmd = match serialize_type {
            SerializeType::Json => json::decode(header)?,
            SerializeType::RocketMq => decode_binary_header(header)?,
        };
        cmd.body = frame.slice(4 + header_len..);
        Ok(cmd)
    }
}

/// The capacity a buffer holding `buffered` bytes of a `frame_bytes` frame grows to when it must grow: twice
/// what has arrived, at least [`READ_BUFFER_MIN`] (within `frame_bytes_max`, so a small frame's buffer still
/// takes in its successors with one read), and never past the frame. A peer that announces 16 MiB and sends
/// 10 bytes therefore costs [`READ_BUFFER_MIN`], not 16 MiB; one that sends the whole frame costs at most
/// twice its bytes in transit, and doubling keeps the copying linear in the frame's size.
pub fn partial_frame_capacity(buffered: usize, frame_bytes: usize, frame_bytes_max: usize) -> usize {
    frame_bytes.min(buffered.saturating_mul(2)).max(READ_BUFFER_MIN.min(frame_bytes_max))
}

/// Grows `src` (holding the start of a `frame_bytes` frame) to [`partial_frame_capacity`] when its free
/// space is below what the next read should take in: the rest of the frame, or [`READ_BUFFER_MIN`] when
/// more remains. Growing only then (not whenever twice the buffered bytes exceeds the capacity) keeps the
/// number of copies logarithmic. A full buffer always grows, so the reader never has to `reserve` (which may
/// double an old capacity past the cap); the new buffer is allocated explicitly for the same reason.
fn grow_for_partial_frame(src: &mut BytesMut, frame_bytes: usize, frame_bytes_max: usize) {
    debug_assert!(src.len() < frame_bytes && frame_bytes <= frame_bytes_max);
    let spare = src.capacity() - src.len();
    if spare >= (frame_bytes - src.len()).min(READ_BUFFER_MIN) {
        return;
    }
    let capacity = partial_frame_capacity(src.len(), frame_bytes, frame_bytes_max);
    if capacity <= src.capacity() {
        // Some free space below a full read chunk, but the buffer already holds what the bound allows.
        return;
    }
    let mut grown = BytesMut::with_capacity(capacity);
    grown.extend_from_slice(src);
    *src = grown;
}

fn len_i32(field: &'static str, len: usize) -> Result<i32> {
    i32::try_from(len).map_err(|_| RemotingError::Unencodable { field, reason: format!("{len} bytes exceed i32") })
}

// ---------------------------------------------------------------------------------------------------------
// Binary (ROCKETMQ) header decoding
// ---------------------------------------------------------------------------------------------------------

/// A bounds-checked big-endian reader over a header.
struct HeaderReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> HeaderReader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8]> {
        let available = self.buf.len().saturating_sub(self.pos);
        if n > available {
            return Err(RemotingError::HeaderTruncated { field, offset: self.pos, needed: n, available });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let s = self.take(field, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn len(&mut self, field: &'static str, len: i64) -> Result<usize> {
        usize::try_from(len).map_err(|_| RemotingError::HeaderLengthNegative { field, len })
    }

    fn text(&mut self, field: &'static str, len: usize) -> Result<String> {
        let bytes = self.take(field, len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| RemotingError::InvalidUtf8 { field })
    }
}

fn decode_binary_header(header: &[u8]) -> Result<RemotingCommand> {
    let mut r = HeaderReader { buf: header, pos: 0 };
    let code = i32::from(r.i16("code")?);
    let language = LanguageCode::from_code(r.array::<1>("language")?[0]);
    let version = i32::from(r.i16("version")?);
    let opaque = r.i32("opaque")?;
    let flag = r.i32("flag")?;
    let remark_len = r.i32("remark length")?;
    let remark_len = r.len("remark", i64::from(remark_len))?;
    let remark = if remark_len > 0 { Some(r.text("remark", remark_len)?) } else { None };
    let ext_len = r.i32("extFields length")?;
    let ext_len = r.len("extFields", i64::from(ext_len))?;
    let ext = r.take("extFields", ext_len)?;
    let mut e = HeaderReader { buf: ext, pos: 0 };
    let mut ext_fields = ExtFields::new();
    while e.pos < ext.len() {
        if ext_fields.len() == EXT_FIELDS_MAX {
            return Err(RemotingError::TooManyExtFields { entries_max: EXT_FIELDS_MAX });
        }
        let key_len = e.i16("extFields key length")?;
        let key_len = e.len("extFields key", i64::from(key_len))?;
        let key = e.text("extFields key", key_len)?;
        let val_len = e.i32("extFields value length")?;
        let val_len = e.len("extFields value", i64::from(val_len))?;
        let val = e.text("extFields value", val_len)?;
        ext_fields.insert(key, val);
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        body: Bytes::new(),
        serialize_type: SerializeType::RocketMq,
    })
}

// ---------------------------------------------------------------------------------------------------------
// tokio-util codec
// ---------------------------------------------------------------------------------------------------------

/// `tokio_util` codec for remoting frames, with a cap on the frame size.
///
/// # Correctness
/// An oversized or negative length prefix is an error before any buffer grows; a partial frame is
/// `Ok(None)`. After an error the connection should be closed: a bad prefix leaves the stream unsynchronised.
#[derive(Debug, Clone, Copy)]
pub struct RemotingCodec {
    frame_bytes_max: usize,
}

impl Default for RemotingCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl RemotingCodec {
    /// A codec with the Java default cap of 16 MiB.
    pub fn new() -> Self {
        Self { frame_bytes_max: FRAME_BYTES_MAX_DEFAULT }
    }

    /// A codec with cap `frame_bytes_max` (whole frame, length prefix included).
    pub fn with_frame_bytes_max(frame_bytes_max: usize) -> Self {
        Self { frame_bytes_max }
    }

    /// The cap.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }
}

impl Decoder for RemotingCodec {
    type Item = RemotingCommand;
    type Error = RemotingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RemotingCommand>> {
        RemotingCommand::decode(src, self.frame_bytes_max)
    }
}

impl Encoder<RemotingCommand> for RemotingCodec {
    type Error = RemotingError;

    fn encode(&mut self, item: RemotingCommand, dst: &mut BytesMut) -> Result<()> {
        item.encode(dst, self.frame_bytes_max)
    }
}

impl Encoder<&RemotingCommand> for RemotingCodec {
    type Error = RemotingError;

    fn encode(&mut self, item: &RemotingCommand, dst: &mut BytesMut) -> Result<()> {
        item.encode(dst, self.frame_bytes_max)
    }
}
