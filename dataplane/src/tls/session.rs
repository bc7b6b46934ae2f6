//! One connection's TLS, over the worker's own buffers (rustls' unbuffered API): what the ring
//! received goes in, plaintext comes out into the connection's input; responses go in as
//! plaintext and leave as records, in order, with whatever the handshake has to say. No I/O
//! here: the worker's ring does all of it.

use std::sync::Arc;

use rustls::{
    HandshakeKind, ServerConfig,
    server::UnbufferedServerConnection,
    unbuffered::{
        ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
    },
};

/// Received bytes held while they do not make a whole record (a record is at most ~16.6 KB; a
/// handshake message may span a few). A peer past this is not speaking TLS.
pub const MAX_BUFFERED: usize = 64 << 10;
/// States one call goes through at most; each call ends long before this (a guard against a
/// state machine that would not settle).
const MAX_STATES: usize = 256;

pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received and not yet processed: the start of a record.
    incoming: Vec<u8>,
    established: bool,
}

/// What one `receive` brought.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The handshake finished with these bytes; `Some(true)`: a resumed session.
    pub established: Option<bool>,
    /// The peer sent close_notify: no more requests will come.
    pub peer_closed: bool,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            established: false,
        })
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Takes `data` from the peer: its plaintext is appended to `plain`, what the handshake
    /// answers to `to_send`. On an error the connection is over; `to_send` may hold the alert
    /// that says why.
    pub fn receive(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        to_send: &mut Vec<u8>,
    ) -> Result<Received, rustls::Error> {
        if self.incoming.len().saturating_add(data.len()) > MAX_BUFFERED {
            return Err(rustls::Error::PeerSentOversizedRecord);
        }
        self.incoming.extend_from_slice(data);
        self.drive(plain, to_send, None)
    }

    /// Encrypts `app_data` into records appended to `to_send`.
    pub fn encrypt(&mut self, app_data: &[u8], to_send: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if !self.established {
            return Err(rustls::Error::HandshakeNotComplete);
        }
        // Every whole record was taken on receipt, so nothing can be read here.
        let mut unread = Vec::new();
        self.drive(&mut unread, to_send, Some(app_data))?;
        Ok(())
    }

    /// Appends a close_notify alert to `to_send` (best effort: a connection past its handshake).
    pub fn close_notify(&mut self, to_send: &mut Vec<u8>) {
        if !self.established {
            return;
        }
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::WriteTraffic(mut write)) = state {
            let _ = fill(to_send, 64, |buf| encrypted(write.queue_close_notify(buf)));
        }
    }

    fn drive(
        &mut self,
        plain: &mut Vec<u8>,
        to_send: &mut Vec<u8>,
        mut app_data: Option<&[u8]>,
    ) -> Result<Received, rustls::Error> {
        let mut received = Received::default();
        for _ in 0..MAX_STATES {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    // The buffer is rustls' to look at until the alert is out (it panics on
                    // one cleared under it); the connection is over after.
                    self.take_alert(to_send);
                    self.incoming.clear();
                    return Err(e);
                }
            };
            let mut settled = false;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                }
                // 0-RTT is not offered (its requests could be replayed), so this is a peer
                // sending it anyway: dropped.
                ConnectionState::ReadEarlyData(mut records) => {
                    while let Some(record) = records.next_record() {
                        discard += record?.discard;
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, to_send)?,
                // What was encoded is in `to_send`, which the worker sends in order.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(mut write) => {
                    if let Some(data) = app_data.take() {
                        encrypt_into(&mut write, data, to_send)?;
                    }
                    settled = true;
                }
                ConnectionState::PeerClosed => received.peer_closed = true,
                ConnectionState::BlockedHandshake | ConnectionState::Closed => settled = true,
                _ => settled = true,
            }
            self.incoming.drain(..discard.min(self.incoming.len()));
            if settled {
                break;
            }
        }
        if !self.established && !self.conn.is_handshaking() {
            self.established = true;
            received.established = Some(self.conn.handshake_kind() == Some(HandshakeKind::Resumed));
        }
        Ok(received)
    }

    /// After an error, the alert rustls queued for the peer, if any.
    fn take_alert(&mut self, to_send: &mut Vec<u8>) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = encode_into(&mut encode, to_send);
        }
    }
}

/// What one attempt to write into a buffer came to.
enum Wrote {
    Bytes(usize),
    /// The buffer must hold this many bytes.
    NeedsRoom(usize),
    Failed,
}

fn encrypted(result: Result<usize, EncryptError>) -> Wrote {
    match result {
        Ok(n) => Wrote::Bytes(n),
        Err(EncryptError::InsufficientSize(s)) => Wrote::NeedsRoom(s.required_size),
        Err(_) => Wrote::Failed,
    }
}

/// Appends the handshake record `encode` holds to `to_send`.
fn encode_into(
    encode: &mut EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    to_send: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    fill(to_send, 4096, |buf| match encode.encode(buf) {
        Ok(n) => Wrote::Bytes(n),
        Err(EncodeError::InsufficientSize(s)) => Wrote::NeedsRoom(s.required_size),
        Err(EncodeError::AlreadyEncoded) => Wrote::Bytes(0),
    })
}

fn encrypt_into(
    write: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    data: &[u8],
    to_send: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    // A record's overhead is under 64 bytes, one record per 16 KB.
    let guess = data
        .len()
        .saturating_add((data.len() / 16_384 + 1).saturating_mul(64));
    fill(to_send, guess, |buf| encrypted(write.encrypt(data, buf)))
}

/// Appends to `out` what `write` puts into a buffer of `guess` bytes, or of the size it asks
/// for.
fn fill(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Wrote,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut size = guess;
    for _ in 0..2 {
        let Some(end) = start.checked_add(size) else {
            break;
        };
        out.resize(end, 0);
        match write(&mut out[start..]) {
            Wrote::Bytes(n) if n <= size => {
                out.truncate(start + n);
                return Ok(());
            }
            Wrote::Bytes(_) | Wrote::Failed => break,
            Wrote::NeedsRoom(needed) => size = needed,
        }
    }
    out.truncate(start);
    Err(rustls::Error::EncryptError)
}

#[cfg(test)]
mod tests;
