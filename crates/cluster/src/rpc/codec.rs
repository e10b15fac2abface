//! A tonic codec that carries serde types as JSON: one value per gRPC
//! message (gRPC's own 5-byte prefix delimits and limits them; see
//! docs/control-plane.md). A message that does not decode is a
//! `Status::invalid_argument` error on the stream, never a panic.
//!
//! Owns: [`JsonCodec`]. Must not touch: message size limits (set on the
//! generated client and server from `ControlSettings::message_bytes_max`).

use bytes::{Buf, BufMut};
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes `E` and decodes `D` as JSON (the generated stubs pick `E` and
/// `D` by the side: the server encodes `JmFrame`, the client `TmFrame`).
#[derive(Debug)]
pub struct JsonCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for JsonCodec<E, D> {
    fn default() -> Self {
        JsonCodec(PhantomData)
    }
}

impl<E, D> Codec for JsonCodec<E, D>
where
    E: Serialize + Send + 'static,
    D: DeserializeOwned + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = JsonEncoder<E>;
    type Decoder = JsonDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        JsonEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        JsonDecoder(PhantomData)
    }
}

/// The encoding half of [`JsonCodec`].
#[derive(Debug)]
pub struct JsonEncoder<E>(PhantomData<E>);

impl<E: Serialize> Encoder for JsonEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        serde_json::to_writer(dst.writer(), &item)
            .map_err(|e| Status::internal(format!("control frame does not encode: {e}")))
    }
}

/// The decoding half of [`JsonCodec`].
#[derive(Debug)]
pub struct JsonDecoder<D>(PhantomData<D>);

impl<D: DeserializeOwned> Decoder for JsonDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        // The buffer holds exactly one message (tonic cut it by its prefix),
        // possibly in several chunks: one contiguous copy, then parse.
        let bytes = src.copy_to_bytes(src.remaining());
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("control frame does not decode: {e}")))
    }
}
