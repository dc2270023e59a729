//! MBAP framing (Modbus Messaging on TCP/IP, section 3.1) and the four
//! function codes drivesec serves: 03 read holding registers, 04 read input
//! registers, 06 write single register, 16 write multiple registers.
//!
//! A frame whose MBAP header is wrong (protocol id not 0, length outside
//! 2..=254, a connection cut inside a frame) is a [`FrameError`]: the caller
//! closes the connection, since the byte stream can no longer be trusted to
//! be in step. A well-framed PDU that is wrong inside gets the exception the
//! Modbus application protocol specifies (01, 02 or 03) and the session
//! goes on.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest PDU (function code + data).
pub const MAX_PDU: usize = 253;
/// Most registers one read may ask for.
pub const MAX_READ: u16 = 125;
/// Most registers one FC 16 write may carry.
pub const MAX_WRITE: u16 = 123;

/// Function codes served.
pub mod fc {
    /// Read holding registers.
    pub const READ_HOLDING: u8 = 0x03;
    /// Read input registers.
    pub const READ_INPUT: u8 = 0x04;
    /// Write single register.
    pub const WRITE_SINGLE: u8 = 0x06;
    /// Write multiple registers.
    pub const WRITE_MULTIPLE: u8 = 0x10;
    /// All of them.
    pub const SUPPORTED: [u8; 4] = [READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE];
}

/// A Modbus exception code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exception {
    /// 01: function not supported, or not permitted for this role.
    IllegalFunction = 1,
    /// 02: an address in the range does not exist.
    IllegalDataAddress = 2,
    /// 03: a value or a count is not acceptable.
    IllegalDataValue = 3,
    /// 04: the server failed while carrying the request out.
    ServerDeviceFailure = 4,
}

/// The MBAP layer is broken: close the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The protocol identifier is not 0 (not Modbus).
    #[error("MBAP protocol identifier is {0}, not 0")]
    Protocol(u16),
    /// The length field is outside 2..=254.
    #[error("MBAP length {0} is outside 2..=254")]
    Length(u16),
    /// The stream ended inside a frame, or failed.
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

/// One application data unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adu {
    /// Transaction identifier, echoed in the response.
    pub transaction: u16,
    /// Unit identifier, echoed.
    pub unit: u8,
    /// Function code and data.
    pub pdu: Vec<u8>,
}

/// Reads one ADU. `Ok(None)` is a clean end of stream between frames.
pub async fn read_adu<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Adu>, FrameError> {
    let mut head = [0u8; 7];
    // A peer that goes away between frames without a TLS close_notify is
    // still a close, not a broken frame.
    let first = match r.read(&mut head[..1]).await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
        Err(e) => return Err(e.into()),
    };
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut head[1..]).await?;
    let transaction = u16::from_be_bytes([head[0], head[1]]);
    let protocol = u16::from_be_bytes([head[2], head[3]]);
    let length = u16::from_be_bytes([head[4], head[5]]);
    if protocol != 0 {
        return Err(FrameError::Protocol(protocol));
    }
    if !(2..=(MAX_PDU as u16 + 1)).contains(&length) {
        return Err(FrameError::Length(length));
    }
    let mut pdu = vec![0u8; usize::from(length) - 1];
    r.read_exact(&mut pdu).await?;
    Ok(Some(Adu {
        transaction,
        unit: head[6],
        pdu,
    }))
}

/// Encodes an ADU around `pdu`.
pub fn encode(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + pdu.len());
    out.extend_from_slice(&transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
    out
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// FC 03.
    ReadHolding {
        /// First address.
        addr: u16,
        /// Registers (1..=125).
        count: u16,
    },
    /// FC 04.
    ReadInput {
        /// First address.
        addr: u16,
        /// Registers (1..=125).
        count: u16,
    },
    /// FC 06.
    WriteSingle {
        /// Address.
        addr: u16,
        /// Value.
        value: u16,
    },
    /// FC 16.
    WriteMultiple {
        /// First address.
        addr: u16,
        /// Values (1..=123).
        values: Vec<u16>,
    },
}

impl Request {
    /// The function code.
    pub fn function(&self) -> u8 {
        match self {
            Request::ReadHolding { .. } => fc::READ_HOLDING,
            Request::ReadInput { .. } => fc::READ_INPUT,
            Request::WriteSingle { .. } => fc::WRITE_SINGLE,
            Request::WriteMultiple { .. } => fc::WRITE_MULTIPLE,
        }
    }

    /// The first address and the number of registers touched.
    pub fn range(&self) -> (u16, u16) {
        match self {
            Request::ReadHolding { addr, count } | Request::ReadInput { addr, count } => {
                (*addr, *count)
            }
            Request::WriteSingle { addr, .. } => (*addr, 1),
            Request::WriteMultiple { addr, values } => (*addr, values.len() as u16),
        }
    }

    /// Whether it changes anything.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::WriteSingle { .. } | Request::WriteMultiple { .. }
        )
    }
}

fn be(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Decodes a PDU. The error is the exception to answer with.
pub fn decode(pdu: &[u8]) -> Result<Request, Exception> {
    let (&function, data) = pdu.split_first().ok_or(Exception::IllegalFunction)?;
    let span_ok = |addr: u16, count: u16| u32::from(addr) + u32::from(count) <= 0x1_0000;
    match function {
        fc::READ_HOLDING | fc::READ_INPUT => {
            if data.len() != 4 {
                return Err(Exception::IllegalDataValue);
            }
            let (addr, count) = (be(data, 0), be(data, 2));
            if !(1..=MAX_READ).contains(&count) {
                return Err(Exception::IllegalDataValue);
            }
            if !span_ok(addr, count) {
                return Err(Exception::IllegalDataAddress);
            }
            Ok(if function == fc::READ_HOLDING {
                Request::ReadHolding { addr, count }
            } else {
                Request::ReadInput { addr, count }
            })
        }
        fc::WRITE_SINGLE => {
            if data.len() != 4 {
                return Err(Exception::IllegalDataValue);
            }
            Ok(Request::WriteSingle {
                addr: be(data, 0),
                value: be(data, 2),
            })
        }
        fc::WRITE_MULTIPLE => {
            if data.len() < 5 {
                return Err(Exception::IllegalDataValue);
            }
            let (addr, count, bytes) = (be(data, 0), be(data, 2), data[4]);
            if !(1..=MAX_WRITE).contains(&count)
                || usize::from(bytes) != 2 * usize::from(count)
                || data.len() != 5 + usize::from(bytes)
            {
                return Err(Exception::IllegalDataValue);
            }
            if !span_ok(addr, count) {
                return Err(Exception::IllegalDataAddress);
            }
            let values = data[5..].chunks_exact(2).map(|c| be(c, 0)).collect();
            Ok(Request::WriteMultiple { addr, values })
        }
        _ => Err(Exception::IllegalFunction),
    }
}

/// The exception response PDU for function code `function`.
pub fn exception_pdu(function: u8, e: Exception) -> Vec<u8> {
    vec![function | 0x80, e as u8]
}

/// The normal response PDU to `req`; `read` holds the registers read.
pub fn response_pdu(req: &Request, read: &[u16]) -> Vec<u8> {
    match req {
        Request::ReadHolding { .. } | Request::ReadInput { .. } => {
            let mut out = Vec::with_capacity(2 + 2 * read.len());
            out.push(req.function());
            out.push((2 * read.len()) as u8);
            for v in read {
                out.extend_from_slice(&v.to_be_bytes());
            }
            out
        }
        Request::WriteSingle { addr, value } => {
            let mut out = vec![fc::WRITE_SINGLE];
            out.extend_from_slice(&addr.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
            out
        }
        Request::WriteMultiple { addr, values } => {
            let mut out = vec![fc::WRITE_MULTIPLE];
            out.extend_from_slice(&addr.to_be_bytes());
            out.extend_from_slice(&(values.len() as u16).to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn reads_a_frame_and_a_clean_end() {
        let mut bytes = encode(7, 1, &[3, 0, 0, 0, 2]);
        bytes.extend(encode(8, 1, &[4, 0, 1, 0, 1]));
        let mut r = &bytes[..];
        let a = block_on(read_adu(&mut r)).unwrap().unwrap();
        assert_eq!(
            (a.transaction, a.unit, a.pdu.clone()),
            (7, 1, vec![3, 0, 0, 0, 2])
        );
        let b = block_on(read_adu(&mut r)).unwrap().unwrap();
        assert_eq!(b.transaction, 8);
        assert!(block_on(read_adu(&mut r)).unwrap().is_none());
    }

    #[test]
    fn broken_mbap_headers_are_errors() {
        let mut bad_proto = encode(1, 1, &[3, 0, 0, 0, 1]);
        bad_proto[3] = 1;
        assert!(matches!(
            block_on(read_adu(&mut &bad_proto[..])),
            Err(FrameError::Protocol(1))
        ));
        for len in [0u16, 1, 255, 0xffff] {
            let mut f = encode(1, 1, &[3, 0, 0, 0, 1]);
            f[4..6].copy_from_slice(&len.to_be_bytes());
            assert!(matches!(
                block_on(read_adu(&mut &f[..])),
                Err(FrameError::Length(l)) if l == len
            ));
        }
        let cut = &encode(1, 1, &[3, 0, 0, 0, 1])[..9];
        assert!(matches!(
            block_on(read_adu(&mut &cut[..])),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn decodes_each_function_and_its_limits() {
        assert_eq!(
            decode(&[3, 0, 10, 0, 2]),
            Ok(Request::ReadHolding { addr: 10, count: 2 })
        );
        assert_eq!(
            decode(&[4, 0xff, 0xff, 0, 1]),
            Ok(Request::ReadInput {
                addr: 0xffff,
                count: 1
            })
        );
        assert_eq!(
            decode(&[4, 0xff, 0xff, 0, 2]),
            Err(Exception::IllegalDataAddress)
        );
        assert_eq!(decode(&[3, 0, 0, 0, 0]), Err(Exception::IllegalDataValue));
        assert_eq!(decode(&[3, 0, 0, 0, 126]), Err(Exception::IllegalDataValue));
        assert_eq!(decode(&[3, 0, 0, 0]), Err(Exception::IllegalDataValue));
        assert_eq!(
            decode(&[6, 0, 1, 0x12, 0x34]),
            Ok(Request::WriteSingle {
                addr: 1,
                value: 0x1234
            })
        );
        assert_eq!(
            decode(&[16, 0, 0, 0, 2, 4, 0, 1, 0, 2]),
            Ok(Request::WriteMultiple {
                addr: 0,
                values: vec![1, 2]
            })
        );
        // Byte count disagreeing with the quantity, or with the data.
        assert_eq!(
            decode(&[16, 0, 0, 0, 2, 3, 0, 1, 0]),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            decode(&[16, 0, 0, 0, 2, 4, 0, 1, 0]),
            Err(Exception::IllegalDataValue)
        );
        for f in [1u8, 2, 5, 15, 23, 43, 0x83, 0] {
            assert_eq!(decode(&[f, 0, 0, 0, 1]), Err(Exception::IllegalFunction));
        }
        assert_eq!(exception_pdu(3, Exception::IllegalFunction), vec![0x83, 1]);
    }

    #[test]
    fn responses_are_encoded_as_the_spec_says() {
        let r = Request::ReadHolding { addr: 0, count: 2 };
        assert_eq!(response_pdu(&r, &[0x0102, 0x0304]), vec![3, 4, 1, 2, 3, 4]);
        let w = Request::WriteMultiple {
            addr: 1000,
            values: vec![1, 2, 3],
        };
        assert_eq!(response_pdu(&w, &[]), vec![16, 0x03, 0xe8, 0, 3]);
        assert_eq!(encode(0x0102, 9, &[3]), vec![1, 2, 0, 0, 0, 2, 9, 3]);
    }

    proptest! {
        // Any bytes: decoding never panics, and what decodes re-encodes into
        // a request with the same function and range.
        #[test]
        fn decode_never_panics(pdu in proptest::collection::vec(any::<u8>(), 0..260)) {
            if let Ok(req) = decode(&pdu) {
                let (addr, count) = req.range();
                prop_assert!(u32::from(addr) + u32::from(count) <= 0x1_0000);
                prop_assert!(count >= 1);
            }
        }

        #[test]
        fn read_adu_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = block_on(read_adu(&mut &bytes[..]));
        }
    }
}
