//! The protobuf codec of every service we generate (ours and Envoy's Check): prost's, except
//! that a request whose bytes are not a valid message, or whose strings are not UTF-8, is the
//! client's fault. prost's codec answers INTERNAL for those, which would page an operator
//! for anyone's garbage; here they are INVALID_ARGUMENT, counted and logged as client errors.

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec with client-error decoding (named by `codec_path` in build.rs).
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// prost's decoder, with decode failures as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(client_error)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// prost reports a bad message as INTERNAL with a description of what was wrong (the field
/// path and the kind of fault, never the bytes): the same text, as the client's error.
fn client_error(status: Status) -> Status {
    if status.code() == Code::Internal {
        Status::invalid_argument(format!(
            "the request is not a valid protobuf message: {}",
            status.message()
        ))
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_faults_become_invalid_argument_and_other_statuses_pass() {
        let err = client_error(Status::internal(
            "failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("UTF-8"), "{}", err.message());
        let other = client_error(Status::out_of_range("too large"));
        assert_eq!(other.code(), Code::OutOfRange);
    }
}
