//! Streams a peer resets before the server has taken them up (issue 11, found through a real
//! Envoy): a gateway whose ext_authz timeouts fire while its Checks still wait to be read
//! resets a whole round of them at once. h2's own bound on such streams (20 per connection)
//! took that for a reset flood and closed the gateway's connection with GOAWAY
//! ENHANCE_YOUR_CALM, and every Check in flight on it. The bound is now
//! `limits.max_pending_accept_reset_streams` (256): a round of resets keeps the connection, a
//! burst past the bound in one read still closes it. Frames are written as they are on the wire (h2's own
//! frame codec), so that a burst of HEADERS and RST_STREAM arrives in one read, before the
//! server accepts any of its streams: what a late gateway sends. The last test pins the other
//! bound of its kind: streams opened past `max_concurrent_streams` are refused, and a peer
//! that keeps opening them is cut off after `MAX_LOCAL_ERROR_RESET_STREAMS` refusals.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use h2::{
    Codec, Reason,
    frame::{Data, Frame, Headers, Pseudo, Reset, Settings, StreamId},
};
use http::{HeaderMap, HeaderValue, Method};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use casola_auth::server::MAX_LOCAL_ERROR_RESET_STREAMS;

use crate::support::{TestServer, test_config};

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const AUTHORIZE: &str = "/casola.auth.v1.AuthorizationService/Authorize";

/// What the server said to a health check on a raw connection.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Its trailers, with this `grpc-status`.
    GrpcStatus(String),
    /// The connection went away first, for this reason.
    GoAway(Reason),
}

/// A client connection that writes frames as given, with none of a client's own rules.
struct RawConnection {
    codec: Codec<TcpStream, Bytes>,
    addr: SocketAddr,
    next_stream: u32,
}

impl RawConnection {
    async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connects");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface written");
        let mut codec = Codec::new(tcp);
        codec
            .send(Settings::default().into())
            .await
            .expect("settings written");
        Self {
            codec,
            addr,
            next_stream: 1,
        }
    }

    /// Queues the HEADERS of a new gRPC call to `path` (not sent until a flush).
    async fn start_call(&mut self, path: &str) -> StreamId {
        let id = StreamId::from(self.next_stream);
        self.next_stream += 2;
        let uri = format!("http://{}{path}", self.addr)
            .parse()
            .expect("a valid uri");
        let mut fields = HeaderMap::new();
        fields.insert("content-type", HeaderValue::from_static("application/grpc"));
        fields.insert("te", HeaderValue::from_static("trailers"));
        let headers = Headers::new(id, Pseudo::request(Method::POST, uri, None), fields);
        self.codec.feed(headers.into()).await.expect("queued");
        id
    }

    /// Writes `n` calls to Authorize, each reset (CANCEL) right after its HEADERS, in one
    /// write: the server reads them all before it takes any of them up.
    async fn reset_round(&mut self, n: usize) {
        for _ in 0..n {
            let id = self.start_call(AUTHORIZE).await;
            self.codec
                .feed(Reset::new(id, Reason::CANCEL).into())
                .await
                .expect("queued");
        }
        SinkExt::flush(&mut self.codec).await.expect("written");
    }

    /// The server's next frame, its SETTINGS acknowledged on the way; `None` once the
    /// connection is closed.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let frame = self.codec.next().await?.expect("a well-formed frame");
            match frame {
                Frame::Settings(s) if !s.is_ack() => {
                    self.codec
                        .send(Settings::ack().into())
                        .await
                        .expect("acked");
                }
                frame => return Some(frame),
            }
        }
    }

    /// Reads until the server's GOAWAY: how many streams it refused (RST_STREAM
    /// REFUSED_STREAM) before it, and the GOAWAY's reason.
    async fn refusals_until_goaway(&mut self) -> (usize, Reason) {
        let mut refused = 0;
        while let Some(frame) = self.next_frame().await {
            match frame {
                Frame::Reset(r) if r.reason() == Reason::REFUSED_STREAM => refused += 1,
                Frame::GoAway(g) => return (refused, g.reason()),
                _ => {}
            }
        }
        panic!("the connection closed without a GOAWAY after {refused} refusals");
    }

    /// A health check (an empty message) on a new stream, and what came back for it.
    async fn health_check(&mut self) -> Answer {
        let id = self.start_call(HEALTH_CHECK).await;
        let mut message = Data::new(id, Bytes::from_static(&[0, 0, 0, 0, 0]));
        message.set_end_stream(true);
        self.codec.send(message.into()).await.expect("written");
        while let Some(frame) = self.next_frame().await {
            match frame {
                Frame::Headers(h) if h.stream_id() == id && h.is_end_stream() => {
                    let status = h.fields().get("grpc-status").expect("grpc-status");
                    return Answer::GrpcStatus(status.to_str().expect("ascii").to_owned());
                }
                Frame::GoAway(g) => return Answer::GoAway(g.reason()),
                _ => {}
            }
        }
        panic!("the connection closed without a GOAWAY");
    }
}

#[tokio::test]
async fn a_round_of_streams_reset_before_they_are_read_keeps_the_connection() {
    let config = test_config(None);
    // A whole round: every stream the connection may have open, timed out at once.
    let round = config.limits.max_concurrent_streams as usize;
    let bound = config.limits.max_pending_accept_reset_streams as usize;
    assert!(
        round > 20,
        "more than h2's default bound, or the test proves nothing"
    );
    let server = TestServer::with_config(config, None).await;
    let mut conn = RawConnection::open(server.running.grpc_addr).await;
    assert_eq!(conn.health_check().await, Answer::GrpcStatus("0".into()));

    conn.reset_round(round).await;
    assert_eq!(
        conn.health_check().await,
        Answer::GrpcStatus("0".into()),
        "the connection outlives a round of resets"
    );
    // And rounds past the bound in all (9 x 32 = 288 > 256): it counts the streams waiting
    // to be taken up, not every reset the connection has sent.
    let rounds = bound / round;
    assert!((rounds + 1) * round > bound);
    for _ in 0..rounds {
        conn.reset_round(round).await;
        assert_eq!(conn.health_check().await, Answer::GrpcStatus("0".into()));
    }
}

#[tokio::test]
async fn a_reset_burst_past_the_configured_bound_closes_the_connection() {
    let mut config = test_config(None);
    config.limits.max_pending_accept_reset_streams = 40;
    let server = TestServer::with_config(config, None).await;
    let mut conn = RawConnection::open(server.running.grpc_addr).await;
    assert_eq!(conn.health_check().await, Answer::GrpcStatus("0".into()));

    // Under the bound (and over h2's default, so the setting is the one in force), twice
    // (64 in all, past the bound: only a read's backlog counts)...
    for _ in 0..2 {
        conn.reset_round(32).await;
        assert_eq!(conn.health_check().await, Answer::GrpcStatus("0".into()));
    }
    // ...and past it in one read: the backlog the bound is for.
    conn.reset_round(64).await;
    assert_eq!(
        conn.health_check().await,
        Answer::GoAway(Reason::ENHANCE_YOUR_CALM)
    );
    // The server itself is unharmed: a new connection is answered.
    let mut fresh = RawConnection::open(server.running.grpc_addr).await;
    assert_eq!(fresh.health_check().await, Answer::GrpcStatus("0".into()));
}

/// Streams past `max_concurrent_streams` are refused (REFUSED_STREAM, safe to retry), and
/// each refusal counts toward h2's lifetime bound of errors a connection's peer may cause:
/// a client that ignores the server's SETTINGS and keeps opening streams is cut off after
/// `MAX_LOCAL_ERROR_RESET_STREAMS` refusals. A gateway that honours SETTINGS never meets it
/// (Envoy over-sends only on a new connection, before the SETTINGS frame, at most a burst).
#[tokio::test]
async fn a_client_that_keeps_opening_streams_past_the_limit_is_cut_off_at_the_lifetime_bound() {
    let config = test_config(None);
    let limit = config.limits.max_concurrent_streams as usize;
    let server = TestServer::with_config(config, None).await;
    let mut conn = RawConnection::open(server.running.grpc_addr).await;
    assert_eq!(conn.health_check().await, Answer::GrpcStatus("0".into()));

    // Every stream the connection may have, held open (HEADERS, the message never sent)...
    for _ in 0..limit {
        conn.start_call(HEALTH_CHECK).await;
    }
    // ...then the bound of streams past it, and one more, in one write.
    for _ in 0..=MAX_LOCAL_ERROR_RESET_STREAMS {
        conn.start_call(HEALTH_CHECK).await;
    }
    SinkExt::flush(&mut conn.codec).await.expect("written");
    let outcome = tokio::time::timeout(Duration::from_secs(30), conn.refusals_until_goaway())
        .await
        .expect("the connection is closed at the bound, not kept refusing for ever");
    assert_eq!(
        outcome,
        (MAX_LOCAL_ERROR_RESET_STREAMS, Reason::ENHANCE_YOUR_CALM),
        "each stream past the limit refused, until the bound"
    );
    // The server itself is unharmed: a new connection is answered.
    let mut fresh = RawConnection::open(server.running.grpc_addr).await;
    assert_eq!(fresh.health_check().await, Answer::GrpcStatus("0".into()));
}
