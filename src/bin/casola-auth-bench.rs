//! casola-auth-bench: the load generator and helpers behind `scripts/bench.py`.
//!
//! - `load`: closed-loop (or paced with `--rate`) gRPC load against one server, printing one
//!   JSON line: requests/s, p50/p90/p99/max latency, errors. Modes: `baseline` (grpc.health
//!   Check, the no-op RPC of the same server build), `authorize`, `authorize-wrong` (the
//!   tokens with a wrong secret), `authorize-unknown` (well-formed tokens of no row: the
//!   store lookup alone), `check` (Envoy ext_authz Check), `create` (TokenService
//!   CreateToken with `--issuer`, one new token per call).
//! - `frame`: writes one request of a mode as a length-prefixed gRPC frame, the body that
//!   `h2load -d` sends, so the ratios can be measured with a load generator that is not ours.
//! - `probe`: one call through the real generated client, printing its gRPC status and
//!   decision: h2load counts HTTP statuses only, so the bench checks the answer first.
//! - `mint`: writes valid tokens straight into Postgres (all sharing one secret part, so one
//!   argon2 hash serves them all; each still costs a full verify when first used), plus
//!   optional filler rows, and prints `id token` lines.
//! - `argon2`: the time of one verify at given parameters on this machine.
//! - `revoke-latency`: revokes through one replica and measures until the other denies.
//! - `deadline`: closed-loop Authorize or Check with a `grpc-timeout` on every call, through
//!   a plain HTTP/2 client that does not enforce the deadline itself, recording each answer's
//!   status and latency: how many OKs arrived after their deadline, the admitted calls'
//!   latency, the shed calls' latency (`scripts/overload.py`). With `--gateway` the calls are
//!   HTTP GETs through Envoy instead (200 counted as OK, 503 as shed), for the overload run
//!   through a real gateway (`overload.py --via envoy`).
//! - `decision-ids`: the time to make a decision id, and its text.
//!
//! It is a benchmark tool, not a test: it asserts nothing about speed.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use casola_auth::{
    proto::{
        AuthorizeRequest, CreateTokenRequest, Decision, DenyReason, RevokeTokenRequest,
        authorization_service_client::AuthorizationServiceClient,
        token_service_client::TokenServiceClient,
    },
    token::{
        PlainToken, checksum,
        hash::{HashParams, TokenHasher},
    },
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};
use hdrhistogram::Histogram;
use prost::Message;
use rand::{RngExt, rand_core::UnwrapErr, rngs::SysRng};
use serde_json::json;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
#[command(
    name = "casola-auth-bench",
    about = "Load generator for casola-auth benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    Baseline,
    Authorize,
    AuthorizeWrong,
    /// Well-formed tokens whose lookup id is in no row: one store read, no verify.
    AuthorizeUnknown,
    Check,
    /// CreateToken as `--issuer` (a token holding tokens:issue).
    Create,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run load against one server.
    Load(LoadArgs),
    /// Write one request as a gRPC frame (5-byte header + message) for `h2load -d`.
    Frame(FrameArgs),
    /// Make one call and print its gRPC status and decision; exits 1 unless OK and allowed.
    Probe(ProbeArgs),
    /// Insert valid tokens (and filler rows) into Postgres.
    Mint(MintArgs),
    /// Time argon2 verifies at these parameters (one thread).
    Argon2(Argon2Args),
    /// Revoke through replica A, measure until replica B denies.
    RevokeLatency(RevokeArgs),
    /// Load with a deadline on every call, each answer's status and latency recorded.
    Deadline(DeadlineArgs),
    /// Time making decision ids (and their text), one thread.
    DecisionIds(DecisionIdArgs),
}

#[derive(Args)]
struct DecisionIdArgs {
    #[arg(long, default_value_t = 2_000_000)]
    count: u32,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Token file (`id token` per line) for the authorize and check modes.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Use at most this many distinct tokens from the file.
    #[arg(long)]
    token_count: Option<usize>,
    /// Position in the token list to start cycling from, so that back-to-back runs continue
    /// one cycle instead of each starting over at the first token.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Use each token once (a cold verify per call); stops when they run out.
    #[arg(long)]
    once: bool,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Total requests per second (paced); unset: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Scope required by authorize and check calls.
    #[arg(long, default_value = "user:read")]
    scope: String,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Send what restrictions are checked against with every request: a client address
    /// (Authorize `client_ip`, Check's source address) and a model (Authorize `model`, a
    /// JSON chat body in Check), so that restricted and unrestricted tokens are compared on
    /// the same requests.
    #[arg(long)]
    with_facts: bool,
    /// The caller of `create` (a token holding tokens:issue).
    #[arg(long, default_value = "")]
    issuer: String,
}

#[derive(Args)]
struct DeadlineArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// `authorize` or `check`.
    #[arg(long, value_enum, default_value = "authorize")]
    mode: Mode,
    /// Token file (`id token` per line); its tokens are cycled.
    #[arg(long)]
    tokens: PathBuf,
    /// The `grpc-timeout` of every call, in milliseconds.
    #[arg(long, default_value_t = 200)]
    deadline_ms: u64,
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Calls in flight: the closed loop's callers, or the open loop's most (past it a
    /// call due is not sent, and counted as `not_sent`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: this many calls a second in all, each sent when due whether or not
    /// earlier ones were answered (as users behind a gateway send them). 0: closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value = "user:read")]
    scope: String,
    /// Through a gateway instead: `--target` is Envoy's listener and every call an HTTP/2
    /// GET of `/` with `Authorization: Bearer <token>` and no deadline of its own (the
    /// gateway's ext_authz timeout is the deadline). 200 counts as OK, 503 (Envoy's
    /// `status_on_error`: a shed or late Check, or Envoy's own timeout) as shed, any other
    /// status under `other` as `http_<status>`; `--deadline-ms` is then only the line for
    /// `ok_late`. `--mode` is ignored.
    #[arg(long)]
    gateway: bool,
}

#[derive(Args)]
struct FrameArgs {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Token file (`id token` per line); its first token goes into the request.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Scope required by the authorize and check requests.
    #[arg(long, default_value = "user:read")]
    scope: String,
    /// Where to write the frame.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ProbeArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Token file (`id token` per line); its first token is used.
    #[arg(long)]
    tokens: Option<PathBuf>,
    #[arg(long, default_value = "user:read")]
    scope: String,
    /// As `load --with-facts`.
    #[arg(long)]
    with_facts: bool,
}

#[derive(Args)]
struct MintArgs {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    filler: usize,
    #[arg(long, default_value = "bench")]
    org: String,
    #[arg(long, default_value = "user:read,user:write")]
    scopes: String,
    #[command(flatten)]
    params: ParamArgs,
}

#[derive(Args)]
struct ParamArgs {
    #[arg(long, default_value_t = 19456)]
    memory_kib: u32,
    #[arg(long, default_value_t = 2)]
    iterations: u32,
    #[arg(long, default_value_t = 1)]
    parallelism: u32,
}

impl ParamArgs {
    fn hash_params(&self) -> HashParams {
        HashParams {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }
}

#[derive(Args)]
struct Argon2Args {
    #[command(flatten)]
    params: ParamArgs,
    #[arg(long, default_value_t = 40)]
    rounds: usize,
}

#[derive(Args)]
struct RevokeArgs {
    #[arg(long)]
    a: String,
    #[arg(long)]
    b: String,
    /// A token allowed to revoke the tokens (tokens:issue).
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    tokens: PathBuf,
    #[arg(long, default_value_t = 200)]
    count: usize,
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Cmd::Load(args) => load(args).await,
        Cmd::Frame(args) => frame(&args),
        Cmd::Probe(args) => probe(&args).await,
        Cmd::Mint(args) => mint(&args).await,
        Cmd::Argon2(args) => argon2(&args),
        Cmd::RevokeLatency(args) => revoke_latency(&args).await,
        Cmd::Deadline(args) => deadline_load(args).await,
        Cmd::DecisionIds(args) => decision_ids(&args),
    }
}

/// The cost of a decision id: making one, and making one and its text (what every answer
/// carries), in nanoseconds.
fn decision_ids(args: &DecisionIdArgs) {
    let n = args.count.max(1);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(casola_auth::telemetry::call::new_decision_id());
    }
    let make = start.elapsed().as_nanos() as f64 / f64::from(n);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(casola_auth::telemetry::call::new_decision_id().to_string());
    }
    let with_text = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "{}",
        json!({"count": n, "ns_per_id": make, "ns_per_id_and_text": with_text})
    );
}

fn read_tokens(path: &PathBuf) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("read tokens file")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, t)| (id.to_owned(), t.to_owned()))
        .collect()
}

/// The first token of an optional token file, or an empty string (baseline needs none).
fn first_token(path: Option<&PathBuf>) -> String {
    path.map(read_tokens)
        .and_then(|l| l.into_iter().next())
        .map(|(_, t)| t)
        .unwrap_or_default()
}

/// The same lookup id with a different secret part and a valid checksum.
fn wrong_secret(token: &str, n: usize) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body: Vec<u8> = token[..48].bytes().collect();
    let pos = 16 + n % 32;
    let i = B62.iter().position(|&c| c == body[pos]).unwrap_or(0);
    body[pos] = B62[(i + 1 + (n / 32) % 61) % 62];
    let body = String::from_utf8(body).expect("ascii");
    let sum = checksum(&body);
    format!("{body}{sum}")
}

async fn connect(target: &str) -> Channel {
    Endpoint::from_shared(target.to_owned())
        .expect("target URL")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect")
}

/// Whether requests carry a client address and a model (`--with-facts`); set once at start.
static WITH_FACTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The client address and model sent with `--with-facts`.
const FACT_IP: &str = "127.0.0.1";
const FACT_MODEL: &str = "llama-4-scout";

fn with_facts() -> bool {
    WITH_FACTS.load(Ordering::Relaxed)
}

fn authorize_request(token: String, scope: &str) -> AuthorizeRequest {
    let facts = with_facts();
    AuthorizeRequest {
        token,
        required_scopes: vec![scope.to_owned()],
        client_ip: if facts { FACT_IP.into() } else { String::new() },
        model: if facts {
            FACT_MODEL.into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn check_request(token: &str, scope: &str) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    let headers = HashMap::from([("authorization".to_owned(), format!("Bearer {token}"))]);
    let facts = with_facts();
    // A chat request as the OpenAI SDK sends it: the model after the messages.
    let body = if facts {
        json!({
            "messages": [{"role": "user", "content": "Say hello in one short sentence, please."}],
            "model": FACT_MODEL,
            "max_tokens": 64,
        })
        .to_string()
        .into_bytes()
    } else {
        Vec::new()
    };
    let source = facts.then(|| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: FACT_IP.into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    path: "/openai/v1/chat/completions".into(),
                    headers,
                    size: i64::try_from(body.len()).unwrap_or(-1),
                    raw_body: body,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("casola.scopes".to_owned(), scope.to_owned())]),
            ..Default::default()
        }),
    }
}

/// The three clients a load worker may call, over one shared channel.
struct Clients {
    health: HealthClient<Channel>,
    authz: AuthorizationServiceClient<Channel>,
    check: AuthorizationClient<Channel>,
    tokens: TokenServiceClient<Channel>,
    /// `Bearer <issuer>` for `create`.
    issuer: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Self {
            health: HealthClient::new(channel.clone()),
            authz: AuthorizationServiceClient::new(channel.clone()),
            check: AuthorizationClient::new(channel.clone()),
            tokens: TokenServiceClient::new(channel),
            issuer: None,
        }
    }

    fn with_issuer(mut self, issuer: &str) -> Self {
        if !issuer.is_empty() {
            self.issuer =
                Some(MetadataValue::try_from(format!("Bearer {issuer}")).expect("header"));
        }
        self
    }

    /// One call of `mode`: `Ok(true)` when allowed (or served, for the baseline).
    async fn call(
        &mut self,
        mode: Mode,
        token: String,
        scope: &str,
    ) -> Result<bool, tonic::Status> {
        match mode {
            Mode::Baseline => self
                .health
                .check(HealthCheckRequest::default())
                .await
                .map(|_| true),
            Mode::Authorize | Mode::AuthorizeWrong | Mode::AuthorizeUnknown => self
                .authz
                .authorize(authorize_request(token, scope))
                .await
                .map(|r| r.into_inner().decision() == Decision::Allow),
            Mode::Check => self
                .check
                .check(check_request(&token, scope))
                .await
                .map(|r| r.into_inner().status.is_some_and(|s| s.code == 0)),
            Mode::Create => {
                let mut request = Request::new(CreateTokenRequest {
                    name: "bench".into(),
                    preset: "user-read".into(),
                    org_id: "bench".into(),
                    user_id: format!("created-{}", uuid::Uuid::new_v4()),
                    ..Default::default()
                });
                if let Some(issuer) = &self.issuer {
                    request
                        .metadata_mut()
                        .insert("authorization", issuer.clone());
                }
                self.tokens
                    .create_token(request)
                    .await
                    .map(|r| !r.into_inner().secret.is_empty())
            }
        }
    }
}

fn frame(args: &FrameArgs) {
    let token = first_token(args.tokens.as_ref());
    let message = match args.mode {
        Mode::Baseline => HealthCheckRequest::default().encode_to_vec(),
        Mode::Check => check_request(&token, &args.scope).encode_to_vec(),
        Mode::Create => panic!("no frame for create"),
        Mode::Authorize | Mode::AuthorizeWrong | Mode::AuthorizeUnknown => {
            authorize_request(token, &args.scope).encode_to_vec()
        }
    };
    // gRPC length-prefixed message: compression flag 0, then the length as big-endian u32.
    let len = u32::try_from(message.len()).expect("message under 4 GiB");
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&message);
    std::fs::write(&args.out, out).expect("write frame");
}

async fn probe(args: &ProbeArgs) {
    WITH_FACTS.store(args.with_facts, Ordering::Relaxed);
    let token = first_token(args.tokens.as_ref());
    let mut clients = Clients::new(connect(&args.target).await);
    let outcome = clients.call(args.mode, token, &args.scope).await;
    let (code, allowed) = match &outcome {
        Ok(allowed) => (tonic::Code::Ok, *allowed),
        Err(status) => (status.code(), false),
    };
    println!(
        "{}",
        json!({ "mode": format!("{:?}", args.mode).to_lowercase(), "grpc_status": format!("{code:?}"), "allowed": allowed })
    );
    if !allowed {
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    denied: u64,
    /// Errors other than the two below.
    errors: u64,
    /// RESOURCE_EXHAUSTED.
    shed: u64,
    /// DEADLINE_EXCEEDED.
    expired: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.denied += other.denied;
        self.errors += other.errors;
        self.shed += other.shed;
        self.expired += other.expired;
    }

    fn requests(&self) -> u64 {
        self.ok + self.denied + self.errors + self.shed + self.expired
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// What every load worker shares.
struct Plan {
    mode: Mode,
    list: Vec<String>,
    /// Next token for `--once`.
    next: AtomicUsize,
    once: bool,
    start: usize,
    concurrency: usize,
    scope: String,
    deadline: Instant,
    per_worker: Option<Duration>,
    issuer: String,
}

impl Plan {
    /// The token for call `n` of a worker (`n` starts at the worker's index), or `None`
    /// when `--once` ran out of tokens.
    fn token(&self, n: usize) -> Option<String> {
        let token = match (self.mode, self.once) {
            (Mode::Baseline | Mode::Create, _) => return Some(String::new()),
            (_, true) => self
                .list
                .get(self.next.fetch_add(1, Ordering::Relaxed))?
                .clone(),
            (_, false) => self.list[(self.start + n) % self.list.len()].clone(),
        };
        Some(if self.mode == Mode::AuthorizeWrong {
            wrong_secret(&token, n)
        } else {
            token
        })
    }
}

fn load_tokens(args: &LoadArgs) -> Vec<String> {
    if args.mode == Mode::AuthorizeUnknown {
        return (0..10_000)
            .map(|_| PlainToken::generate().expose().to_owned())
            .collect();
    }
    let mut list: Vec<String> = args
        .tokens
        .as_ref()
        .map(read_tokens)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    if let Some(n) = args.token_count {
        list.truncate(n);
    }
    if !matches!(args.mode, Mode::Baseline | Mode::Create) && list.is_empty() {
        panic!("--tokens is needed for {:?}", args.mode);
    }
    list
}

async fn load(args: LoadArgs) {
    WITH_FACTS.store(args.with_facts, Ordering::Relaxed);
    let list = load_tokens(&args);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(connect(&args.target).await);
    }
    let plan = Arc::new(Plan {
        mode: args.mode,
        list,
        next: AtomicUsize::new(args.start),
        once: args.once,
        start: args.start,
        concurrency: args.concurrency,
        scope: args.scope.clone(),
        deadline: Instant::now() + Duration::from_secs_f64(args.duration),
        per_worker: args
            .rate
            .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r)),
        issuer: args.issuer.clone(),
    });
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            tokio::spawn(worker(plan.clone(), channel, w))
        })
        .collect();
    let mut hist = histogram();
    let mut total = Tally::default();
    for w in workers {
        let (h, t) = w.await.expect("worker");
        hist.add(h).expect("merge");
        total.add(&t);
    }
    report(
        &args,
        plan.list.len(),
        started.elapsed().as_secs_f64(),
        &hist,
        &total,
    );
}

/// One closed-loop (or paced) caller until the deadline.
async fn worker(plan: Arc<Plan>, channel: Channel, w: usize) -> (Histogram<u64>, Tally) {
    let mut hist = histogram();
    let mut tally = Tally::default();
    let mut clients = Clients::new(channel).with_issuer(&plan.issuer);
    let mut pace = plan.per_worker.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut n = w;
    while Instant::now() < plan.deadline {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let Some(token) = plan.token(n) else { break };
        n += plan.concurrency;
        let t0 = Instant::now();
        let outcome = clients.call(plan.mode, token, &plan.scope).await;
        let micros = t0.elapsed().as_micros().max(1) as u64;
        let _ = hist.record(micros.min(60_000_000));
        match outcome {
            Ok(true) => tally.ok += 1,
            Ok(false) => tally.denied += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => tally.shed += 1,
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => tally.expired += 1,
            Err(_) => tally.errors += 1,
        }
    }
    (hist, tally)
}

fn report(args: &LoadArgs, distinct: usize, elapsed: f64, hist: &Histogram<u64>, total: &Tally) {
    let requests = total.requests();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "label": args.label, "mode": format!("{:?}", args.mode).to_lowercase(),
            "connections": args.connections, "concurrency": args.concurrency, "rate": args.rate,
            "distinct_tokens": distinct, "requests": requests, "seconds": elapsed,
            "rps": requests as f64 / elapsed, "ok": total.ok, "denied": total.denied,
            "errors": total.errors, "shed": total.shed, "deadline_exceeded": total.expired,
            "p50_ms": ms(0.5), "p90_ms": ms(0.9),
            "p99_ms": ms(0.99), "max_ms": hist.max() as f64 / 1000.0,
        })
    );
}

fn argon2(args: &Argon2Args) {
    let hasher = TokenHasher::new(args.params.hash_params()).expect("params");
    let token = PlainToken::generate();
    let hash = hasher.hash(&token).expect("hash");
    let _ = hasher.verify(&token, &hash);
    let t0 = Instant::now();
    for _ in 0..args.rounds {
        let _ = hasher.verify(&token, &hash).expect("verify");
    }
    let per = t0.elapsed().as_secs_f64() / args.rounds as f64;
    let p = &args.params;
    println!(
        "{}",
        json!({ "verify_ms": per * 1000.0, "memory_kib": p.memory_kib, "iterations": p.iterations, "parallelism": p.parallelism })
    );
}

const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` random base-62 characters.
fn random_b62(rng: &mut UnwrapErr<SysRng>, n: usize) -> String {
    (0..n)
        .map(|_| char::from(B62[rng.random_range(0..62)]))
        .collect()
}

async fn mint(args: &MintArgs) {
    let (client, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    if args.filler > 0 {
        insert_filler(&client, args.filler).await;
    }
    let mut rng = UnwrapErr(SysRng);
    let secret = random_b62(&mut rng, 32);
    let probe = PlainToken::parse(&{
        let body = format!("csl_{}{secret}", random_b62(&mut rng, 12));
        let sum = checksum(&body);
        format!("{body}{sum}")
    })
    .expect("well-formed");
    let hash = TokenHasher::new(args.params.hash_params())
        .expect("params")
        .hash(&probe)
        .expect("hash");
    let scopes: Vec<String> = args.scopes.split(',').map(str::to_owned).collect();
    let mut out = String::new();
    for chunk_start in (0..args.count).step_by(10_000) {
        let n = (args.count - chunk_start).min(10_000);
        let mut ids = Vec::with_capacity(n);
        let mut lookups = Vec::with_capacity(n);
        for _ in 0..n {
            let lookup = random_b62(&mut rng, 12);
            let body = format!("csl_{lookup}{secret}");
            let sum = checksum(&body);
            let id = uuid::Uuid::new_v4().to_string();
            out.push_str(&format!("{id} {body}{sum}\n"));
            ids.push(id);
            lookups.push(lookup);
        }
        client
            .execute(
                "insert into api_tokens (id, lookup_id, secret_hash, name, description, scopes, org_id, user_id, created_at, created_by) \
                 select t.id, t.lookup, $3, 'bench', '', $4::text[], $5, 'bench-' || t.ord, now(), 'cli' \
                 from unnest($1::text[]::uuid[], $2::text[]) with ordinality as t(id, lookup, ord)",
                &[&ids, &lookups, &hash.as_str(), &scopes, &args.org],
            )
            .await
            .expect("insert tokens");
    }
    print!("{out}");
}

/// Rows that are never used: they only make the table (and its indexes) large.
async fn insert_filler(client: &tokio_postgres::Client, filler: usize) {
    client
        .execute(
            "insert into api_tokens (id, lookup_id, secret_hash, name, description, scopes, org_id, user_id, created_at, created_by) \
             select gen_random_uuid(), substr(md5(random()::text || g::text), 1, 12), '$argon2id$v=19$m=8,t=1,p=1$filler$filler', \
                    'filler', '', '{user:read}', 'filler', 'u' || g, now(), 'cli' \
             from generate_series(1, $1::int) g on conflict do nothing",
            &[&(filler as i32)],
        )
        .await
        .expect("filler rows");
    client
        .batch_execute("analyze api_tokens")
        .await
        .expect("analyze");
}

/// The decision and deny reason of one Authorize of `token` (no scopes) on `watcher`. A
/// call shed or past its deadline (a busy replica's first use) is tried again, for up to
/// 30 s: this measures revocations, not the cold path.
async fn decide(
    watcher: &mut AuthorizationServiceClient<Channel>,
    token: &str,
) -> (Decision, DenyReason) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = watcher
            .authorize(AuthorizeRequest {
                token: token.to_owned(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(r) => {
                let r = r.into_inner();
                return (r.decision(), r.deny_reason());
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
                ) && Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("authorize on B: {s:?}"),
        }
    }
}

async fn revoke_latency(args: &RevokeArgs) {
    let list = read_tokens(&args.tokens);
    let mut revoker = TokenServiceClient::new(connect(&args.a).await);
    let mut watcher = AuthorizationServiceClient::new(connect(&args.b).await);
    let mut hist = histogram();
    let mut revoke_calls = histogram();
    let bearer = MetadataValue::try_from(format!("Bearer {}", args.issuer)).expect("header");
    let mut measured = 0;
    for (id, token) in list.iter().take(args.count) {
        // Warm on B, so only the notice can change its answer.
        assert_eq!(
            decide(&mut watcher, token).await.0,
            Decision::Allow,
            "token must start valid"
        );
        let mut request = Request::new(RevokeTokenRequest { id: id.clone() });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        let t0 = Instant::now();
        revoker.revoke_token(request).await.expect("revoke on A");
        let revoked_at = Instant::now();
        let _ = revoke_calls.record(revoked_at.duration_since(t0).as_micros().max(1) as u64);
        while decide(&mut watcher, token).await != (Decision::Deny, DenyReason::Revoked) {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(30),
                "B never denied a revoked token"
            );
        }
        let _ = hist.record(revoked_at.elapsed().as_micros().max(1) as u64);
        measured += 1;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "revocations": measured, "p50_ms": ms(&hist, 0.5), "p99_ms": ms(&hist, 0.99), "max_ms": hist.max() as f64 / 1000.0,
            "revoke_call_p50_ms": ms(&revoke_calls, 0.5), "revoke_call_p99_ms": ms(&revoke_calls, 0.99),
        })
    );
}

/// A plain HTTP/2 (prior knowledge) client. tonic's `Channel` enforces a request's
/// `grpc-timeout` itself and turns a late answer into its own timeout error; this one sends
/// the header and waits, so a late answer is seen with its real status.
type RawClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

fn raw_client() -> RawClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

/// What the deadline workers share.
struct DeadlinePlan {
    mode: Mode,
    origin: http::Uri,
    tokens: Vec<String>,
    scope: String,
    deadline: Duration,
    concurrency: usize,
    end: Instant,
    /// HTTP GETs through a gateway (`deadline --gateway`), not gRPC calls.
    gateway: bool,
}

/// One answer of a deadline run.
enum Answer {
    /// gRPC OK (allowed or denied: a decision), or through a gateway HTTP 200.
    Ok,
    /// RESOURCE_EXHAUSTED, or through a gateway 503, with the refusal's reason: its message
    /// with the numbers taken out ("waited N ms for a worker"), so the slow refusals can be
    /// told apart by cause.
    Shed(String),
    /// DEADLINE_EXCEEDED.
    Expired,
    /// Anything else: the gRPC code's name, or `http_<status>`.
    Other(String),
}

impl From<Result<(), tonic::Status>> for Answer {
    fn from(result: Result<(), tonic::Status>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(s) => match s.code() {
                tonic::Code::ResourceExhausted => Self::Shed(shed_reason(s.message())),
                tonic::Code::DeadlineExceeded => Self::Expired,
                code => Self::Other(format!("{code:?}")),
            },
        }
    }
}

/// A refusal's message with its numbers replaced by `N`: its reason, whatever the wait.
/// Digits inside a word ("argon2") are part of the word and stay.
fn shed_reason(message: &str) -> String {
    let mut reason = String::with_capacity(message.len());
    let mut in_number = false;
    let mut in_word = false;
    for c in message.chars() {
        if !in_word && (c.is_ascii_digit() || (in_number && c == '.')) {
            if !in_number {
                reason.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            in_word = c.is_alphanumeric() || c == '_';
            reason.push(c);
        }
    }
    reason
}

/// Each answer of a deadline run, by status.
struct Outcomes {
    /// OK answers (allowed or denied: a decision), all of them.
    ok: Histogram<u64>,
    /// OK answers that arrived after their deadline.
    late_ok: u64,
    /// RESOURCE_EXHAUSTED.
    shed: Histogram<u64>,
    /// RESOURCE_EXHAUSTED by reason.
    shed_by_reason: HashMap<String, Histogram<u64>>,
    /// DEADLINE_EXCEEDED.
    expired: Histogram<u64>,
    /// Any answer after its deadline, whatever its status.
    late_any: u64,
    /// Other statuses, by code.
    other: HashMap<String, u64>,
    /// Open loop: calls due while `concurrency` were in flight, not sent.
    not_sent: u64,
}

impl Outcomes {
    fn new() -> Self {
        Self {
            ok: histogram(),
            late_ok: 0,
            shed: histogram(),
            shed_by_reason: HashMap::new(),
            expired: histogram(),
            late_any: 0,
            other: HashMap::new(),
            not_sent: 0,
        }
    }

    /// One answer, `took` after its call was sent.
    fn record(&mut self, answer: Answer, took: Duration, deadline: Duration) {
        let micros = (took.as_micros().max(1) as u64).min(60_000_000);
        let late = took > deadline;
        self.late_any += u64::from(late);
        match answer {
            Answer::Ok => {
                let _ = self.ok.record(micros);
                self.late_ok += u64::from(late);
            }
            Answer::Shed(reason) => {
                let _ = self.shed.record(micros);
                let _ = self
                    .shed_by_reason
                    .entry(reason)
                    .or_insert_with(histogram)
                    .record(micros);
            }
            Answer::Expired => {
                let _ = self.expired.record(micros);
            }
            Answer::Other(what) => *self.other.entry(what).or_default() += 1,
        }
    }

    fn add(&mut self, other: Outcomes) {
        self.ok.add(&other.ok).expect("merge");
        self.shed.add(&other.shed).expect("merge");
        for (reason, h) in other.shed_by_reason {
            self.shed_by_reason
                .entry(reason)
                .or_insert_with(histogram)
                .add(&h)
                .expect("merge");
        }
        self.expired.add(&other.expired).expect("merge");
        self.late_ok += other.late_ok;
        self.late_any += other.late_any;
        self.not_sent += other.not_sent;
        for (code, n) in other.other {
            *self.other.entry(code).or_default() += n;
        }
    }
}

async fn deadline_load(args: DeadlineArgs) {
    assert!(
        matches!(args.mode, Mode::Authorize | Mode::Check),
        "deadline runs drive authorize or check"
    );
    let tokens: Vec<String> = read_tokens(&args.tokens)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert!(!tokens.is_empty(), "no tokens in {}", args.tokens.display());
    let plan = Arc::new(DeadlinePlan {
        mode: args.mode,
        origin: args.target.parse().expect("target URL"),
        tokens,
        scope: args.scope.clone(),
        deadline: Duration::from_millis(args.deadline_ms),
        concurrency: args.concurrency,
        end: Instant::now() + Duration::from_secs_f64(args.duration),
        gateway: args.gateway,
    });
    // One client per connection: the legacy client keeps one HTTP/2 connection per origin.
    let clients: Vec<RawClient> = (0..args.connections.max(1)).map(|_| raw_client()).collect();
    let own_lag = ClientLag::start();
    let started = Instant::now();
    let mut all = Outcomes::new();
    if args.rate > 0 {
        all = open_loop(plan.clone(), &clients, args.rate).await;
    } else {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|w| {
                tokio::spawn(deadline_worker(
                    plan.clone(),
                    clients[w % clients.len()].clone(),
                    w,
                ))
            })
            .collect();
        for w in workers {
            all.add(w.await.expect("worker"));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let max = |h: &Histogram<u64>| h.max() as f64 / 1000.0;
    let others: u64 = all.other.values().sum();
    let requests = all.ok.len() + all.shed.len() + all.expired.len() + others;
    println!(
        "{}",
        json!({
            "mode": if args.gateway { "gateway".to_owned() } else { format!("{:?}", args.mode).to_lowercase() },
            "deadline_ms": args.deadline_ms,
            "connections": args.connections, "concurrency": args.concurrency, "seconds": elapsed,
            "rate": args.rate, "not_sent": all.not_sent,
            "requests": requests, "rps": requests as f64 / elapsed,
            "ok": all.ok.len(), "ok_late": all.late_ok, "late_any": all.late_any,
            "ok_p50_ms": ms(&all.ok, 0.5), "ok_p99_ms": ms(&all.ok, 0.99), "ok_max_ms": max(&all.ok),
            "shed": all.shed.len(), "shed_p50_ms": ms(&all.shed, 0.5), "shed_p99_ms": ms(&all.shed, 0.99),
            "shed_max_ms": max(&all.shed),
            // The must-show's figure: how many shed answers came back within 5 ms of the call.
            "shed_within_5ms": all.shed.count_between(0, 5_000),
            // The same, by the refusal's reason: which refusals are the slow ones.
            "shed_by_reason": all.shed_by_reason.iter().map(|(reason, h)| (reason.clone(), json!({
                "n": h.len(), "within_5ms": h.count_between(0, 5_000),
                "p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99),
            }))).collect::<serde_json::Map<_, _>>(),
            "deadline_exceeded": all.expired.len(), "deadline_exceeded_p50_ms": ms(&all.expired, 0.5),
            "deadline_exceeded_p99_ms": ms(&all.expired, 0.99), "deadline_exceeded_max_ms": max(&all.expired),
            "other": all.other,
            "client_lag_p99_ms": ms(&own_lag.histogram(), 0.99), "client_lag_max_ms": max(&own_lag.histogram()),
        })
    );
}

/// One GET through the gateway, its HTTP status in the deadline run's terms: 200 is OK, 503
/// (Envoy's `status_on_error`) is counted with the shed calls, any other status apart.
async fn gateway_get(plan: &DeadlinePlan, client: &RawClient, token: &str) -> Answer {
    let request = http::Request::get(plan.origin.clone())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(tonic::body::Body::empty())
        .expect("gateway request");
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(_) => return Answer::Other("transport_error".to_owned()),
    };
    let status = response.status();
    // The answer is whole once its body has been read.
    if http_body_util::BodyExt::collect(response.into_body())
        .await
        .is_err()
    {
        return Answer::Other("body_error".to_owned());
    }
    match status {
        http::StatusCode::OK => Answer::Ok,
        http::StatusCode::SERVICE_UNAVAILABLE => Answer::Shed("http_503".to_owned()),
        other => Answer::Other(format!("http_{}", other.as_u16())),
    }
}

/// This client's own runtime delay during a deadline run: a thread hands the runtime a tiny
/// task every 5 ms and records how long it waited to run. An answer that reached this
/// process in time but was read late (the client starved of CPU beside the load generator
/// and the server) shows here, not in the server's figures.
struct ClientLag {
    waits: Arc<std::sync::Mutex<Histogram<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientLag {
    fn start() -> Self {
        let waits = Arc::new(std::sync::Mutex::new(
            Histogram::<u64>::new(3).expect("histogram"),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let (w, s) = (waits.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                let sent = Instant::now();
                let w = w.clone();
                let _ = runtime.block_on(async move {
                    tokio::spawn(async move {
                        let waited = sent.elapsed().as_micros() as u64;
                        w.lock().expect("lag histogram").record(waited).ok();
                    })
                    .await
                });
            }
        });
        Self { waits, stop }
    }

    fn histogram(&self) -> Histogram<u64> {
        self.waits.lock().expect("lag histogram").clone()
    }
}

impl Drop for ClientLag {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One closed-loop caller of a deadline run.
async fn deadline_worker(plan: Arc<DeadlinePlan>, client: RawClient, w: usize) -> Outcomes {
    let mut out = Outcomes::new();
    let mut n = w;
    while Instant::now() < plan.end {
        let token = plan.tokens[n % plan.tokens.len()].clone();
        n += plan.concurrency;
        let t0 = Instant::now();
        let answer = deadline_call(&plan, client.clone(), token).await;
        out.record(answer, t0.elapsed(), plan.deadline);
    }
    out
}

/// The open loop of a deadline run: `rate` calls a second, each sent when due (ticks of
/// 1 ms, the calls due in each sent together), at most `concurrency` in flight.
async fn open_loop(plan: Arc<DeadlinePlan>, clients: &[RawClient], rate: u64) -> Outcomes {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = Outcomes::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent: u64 = 0;
    while Instant::now() < plan.end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let n = sent as usize;
            sent += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                out.not_sent += 1;
                continue;
            };
            let plan = plan.clone();
            let client = clients[n % clients.len()].clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let token = plan.tokens[n % plan.tokens.len()].clone();
                let t0 = Instant::now();
                let answer = deadline_call(&plan, client, token).await;
                let _ = tx.send((answer, t0.elapsed()));
                drop(permit);
            });
        }
    }
    drop(tx);
    while let Some((answer, took)) = rx.recv().await {
        out.record(answer, took, plan.deadline);
    }
    out
}

/// One Authorize or Check call with the run's `grpc-timeout`, or through a gateway one GET.
async fn deadline_call(plan: &DeadlinePlan, client: RawClient, token: String) -> Answer {
    if plan.gateway {
        return gateway_get(plan, &client, &token).await;
    }
    let timeout = MetadataValue::try_from(format!("{}m", plan.deadline.as_millis()))
        .expect("grpc-timeout value");
    let result = match plan.mode {
        Mode::Check => {
            let mut check = AuthorizationClient::with_origin(client, plan.origin.clone());
            let mut request = Request::new(check_request(&token, &plan.scope));
            request.metadata_mut().insert("grpc-timeout", timeout);
            check.check(request).await.map(drop)
        }
        _ => {
            let mut authz = AuthorizationServiceClient::with_origin(client, plan.origin.clone());
            let mut request = Request::new(authorize_request(token, &plan.scope));
            request.metadata_mut().insert("grpc-timeout", timeout);
            authz.authorize(request).await.map(drop)
        }
    };
    result.into()
}

#[cfg(test)]
mod tests {
    use super::shed_reason;

    #[test]
    fn a_refusals_reason_loses_its_numbers_but_not_the_digits_of_its_words() {
        assert_eq!(
            shed_reason("argon2 hashing would not finish before the call's deadline"),
            "argon2 hashing would not finish before the call's deadline"
        );
        assert_eq!(
            shed_reason("queue full (2048 waiting, 12.5 ms each); retry in 30s"),
            "queue full (N waiting, N ms each); retry in Ns"
        );
        assert_eq!(shed_reason("v2 of 3"), "v2 of N");
    }
}
