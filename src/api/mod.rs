//! The HTTP API (SPEC §2.3) as a sans-IO state machine: requests and helper
//! completions in; responses and jobs for the helper threads out.
//!
//! A request either gets its response at once, or waits on a password job
//! and/or a durable write; the reactor runs those and feeds the results back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::auth::{JobId, PasswordJob, PasswordOutcome, Tokens};
use crate::chat::state::{Admission, ChatState, RoomReservation, Taken, UserId};
use crate::chat::validate;
use crate::http::params::{self, ParamError, Params};
use crate::http::request::Request;
use crate::http::response::{Response, ALLOWED_METHODS};
use crate::store::{BatchId, Completion, Record, RoomRecord, UserRecord};

mod chat;
pub(crate) mod history;
pub(crate) mod limits;

pub use chat::{ChatConfig, RateBucket, MAX_ROOMS_PER_CONNECTION};
pub use history::HistoryCounters;
use limits::{client_key, FailureWindow};

/// SPEC §2.3: 5 failed logins per phone number in 15 minutes, 30 per client
/// address in a minute.
const LOGIN_FAILURES_PER_USER: usize = 5;
const LOGIN_USER_WINDOW: Duration = Duration::from_secs(15 * 60);
const LOGIN_FAILURES_PER_CLIENT: usize = 30;
const LOGIN_CLIENT_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at once; past it, new addresses go untracked
/// (the per-user limit still holds).
const MAX_TRACKED_CLIENTS: usize = 50_000;

/// Opaque to the API: the reactor's name for a connection.
pub type ConnRef = crate::chat::state::ConnId;

/// The two clocks a handler may need, read once per reactor turn.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

impl Now {
    pub fn read() -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Now {
            mono: Instant::now(),
            unix_ms,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub room_capacity: u32,
    pub max_rooms: usize,
    pub max_pending_hashes: usize,
    pub chat: ChatConfig,
}

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    Reply(Response),
    /// The reply comes later, from `on_password_done` or `on_batch_done`.
    Pending,
}

#[derive(Debug)]
enum PasswordWait {
    Register {
        conn: ConnRef,
        tel: String,
        name: String,
        avatar_url: String,
    },
    Login {
        conn: ConnRef,
        user: UserId,
        client: IpAddr,
    },
}

#[derive(Debug)]
struct PersistWait {
    conn: ConnRef,
    record: Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Register,
    Login,
    List,
    Create,
    Room,
    UserData,
    History,
    Members,
    Health,
}

/// A request path as a metrics label: one of a fixed set, whatever the
/// client sent.
pub fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/auth/register" => "/auth/register",
        "/auth/login" => "/auth/login",
        "/chatroom/list" => "/chatroom/list",
        "/chatroom/create" => "/chatroom/create",
        "/chatroom/room" => "/chatroom/room",
        "/auth/user_data" => "/auth/user_data",
        "/chatroom/history" => "/chatroom/history",
        "/chatroom/members" => "/chatroom/members",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        "/ws" => "/ws",
        path if crate::web::serves(path) => "web",
        _ => "other",
    }
}

pub(crate) fn route(path: &str) -> Option<Endpoint> {
    match path {
        "/auth/register" => Some(Endpoint::Register),
        "/auth/login" => Some(Endpoint::Login),
        "/chatroom/list" => Some(Endpoint::List),
        "/chatroom/create" => Some(Endpoint::Create),
        "/chatroom/room" => Some(Endpoint::Room),
        "/auth/user_data" => Some(Endpoint::UserData),
        "/chatroom/history" => Some(Endpoint::History),
        "/chatroom/members" => Some(Endpoint::Members),
        "/healthz" => Some(Endpoint::Health),
        _ => None,
    }
}

pub struct Api {
    state: ChatState,
    tokens: Tokens,
    config: ApiConfig,
    next_job: JobId,
    password_waits: HashMap<JobId, PasswordWait>,
    password_jobs: Vec<(JobId, PasswordJob)>,
    unsubmitted: Vec<PersistWait>,
    next_batch: BatchId,
    batches: HashMap<BatchId, Vec<PersistWait>>,
    last_token_purge: Option<Instant>,
    sessions: HashMap<ConnRef, chat::Session>,
    // Failures are counted when a check starts and forgiven if it succeeds,
    // so parallel guesses cannot slip past the limit while hashes run.
    // Keyed by user, not by the phone number sent: unknown numbers cost
    // nothing to try and must not fill this map.
    login_failures_by_user: FailureWindow<UserId>,
    login_failures_by_client: FailureWindow<IpAddr>,
    /// Frames for WebSocket connections, resolved to recipients when they
    /// were produced (membership may change before the reactor drains it).
    outbox: Vec<(ConnRef, Rc<[u8]>)>,
    /// Chat messages and their seqs (SPEC §8): what waits for the log.
    messages: history::MessageFlow,
}

pub(crate) fn invalid(error: String) -> Response {
    Response::res_with_error(400, "invalid parameters", &error)
}

/// A required parameter, checked against its rule.
pub(crate) fn required<'a>(
    params: &'a Params,
    field: &str,
    rule: fn(&str) -> Result<(), &'static str>,
) -> Result<&'a str, Response> {
    match params.get(field) {
        None | Some("") => Err(invalid(format!("{field}: required"))),
        Some(value) => rule(value)
            .map(|()| value)
            .map_err(|why| invalid(format!("{field}: {why}"))),
    }
}

pub(crate) fn non_empty(_: &str) -> Result<(), &'static str> {
    Ok(())
}

pub(crate) fn parse_capacity(params: &Params, default: u32) -> Result<u32, Response> {
    match params.get("capacity") {
        None | Some("") => Ok(default),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(invalid(
                "capacity: must be a whole number from 1 to 10000".to_string(),
            )),
        },
    }
}

/// A phone number after its typed spaces and dashes are gone, checked.
pub(crate) fn required_tel(params: &Params) -> Result<std::borrow::Cow<'_, str>, Response> {
    let typed = required(params, "user_tel", non_empty)?;
    let tel = validate::normalize_tel(typed);
    validate::user_tel(&tel).map_err(|why| invalid(format!("user_tel: {why}")))?;
    Ok(tel)
}

#[derive(Serialize)]
pub(crate) struct LoginData<'a> {
    /// `null` unless it fits the original Android app's 32-bit `Int`.
    pub(crate) user_tel: Option<i32>,
    pub(crate) user_name: &'a str,
    pub(crate) user_avatar_url: &'a str,
    pub(crate) token: &'a str,
}

/// A user's public profile, as `/auth/user_data` answers it.
#[derive(Serialize)]
pub(crate) struct Profile<'a> {
    pub(crate) user_tel: Option<i32>,
    pub(crate) user_name: &'a str,
    pub(crate) user_avatar_url: &'a str,
}

/// The original document put the profile directly in `data`, the original
/// server's later versions under `data.user`: both are served.
#[derive(Serialize)]
pub(crate) struct UserData<'a> {
    #[serde(flatten)]
    pub(crate) profile: &'a Profile<'a>,
    pub(crate) user: &'a Profile<'a>,
}

#[derive(Serialize)]
pub(crate) struct UserDataReply<'a> {
    pub(crate) res: &'a str,
    pub(crate) data: Option<UserData<'a>>,
}

#[derive(Serialize)]
pub(crate) struct LoginReply<'a> {
    pub(crate) res: &'a str,
    pub(crate) data: Option<LoginData<'a>>,
}

pub(crate) fn login_failure(res: &'static str) -> Response {
    Response::json(200, &LoginReply { res, data: None }).with_outcome(res)
}

/// One room in `/chatroom/list`. Both names in every entry of both lists:
/// the original document shows `room_name`, the original Android app reads
/// `room_list[].name` (a missing one blanks its list and crashes its search).
#[derive(Serialize)]
pub(crate) struct RoomEntry<'a> {
    pub(crate) name: &'a str,
    pub(crate) room_name: &'a str,
    pub(crate) population: usize,
}

#[derive(Serialize)]
pub(crate) struct RoomList<'a> {
    pub(crate) rooms: &'a [RoomEntry<'a>],
    pub(crate) room_list: &'a [RoomEntry<'a>],
}

pub(crate) fn preflight() -> Response {
    Response {
        status: 204,
        content_type: crate::http::response::JSON,
        headers: vec![
            ("Access-Control-Allow-Methods", ALLOWED_METHODS.to_string()),
            (
                "Access-Control-Allow-Headers",
                "Content-Type, Authorization, X-Requested-With".to_string(),
            ),
            ("Access-Control-Max-Age", "86400".to_string()),
        ],
        body: Vec::new(),
        outcome: "preflight",
    }
}

impl Api {
    pub fn new(state: ChatState, config: ApiConfig) -> Api {
        Api {
            state,
            tokens: Tokens::default(),
            config,
            next_job: 1,
            password_waits: HashMap::new(),
            password_jobs: Vec::new(),
            unsubmitted: Vec::new(),
            next_batch: 1,
            batches: HashMap::new(),
            last_token_purge: None,
            sessions: HashMap::new(),
            outbox: Vec::new(),
            messages: history::MessageFlow::default(),
            login_failures_by_user: FailureWindow::new(
                LOGIN_FAILURES_PER_USER,
                LOGIN_USER_WINDOW,
                usize::MAX,
            ),
            login_failures_by_client: FailureWindow::new(
                LOGIN_FAILURES_PER_CLIENT,
                LOGIN_CLIENT_WINDOW,
                MAX_TRACKED_CLIENTS,
            ),
        }
    }

    pub fn state(&self) -> &ChatState {
        &self.state
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Answers a request now, or starts the work its answer waits on.
    /// `from` is the client's address: the peer's, or the one a trusted
    /// proxy named (`http::forwarded`); per-address limits count by it.
    pub fn handle(&mut self, conn: ConnRef, request: &Request, from: IpAddr, now: Now) -> Outcome {
        let Some(endpoint) = route(request.path()) else {
            return Outcome::Reply(Response::res(404, "not found"));
        };
        match request.method.as_str() {
            "GET" | "HEAD" | "POST" => {}
            "OPTIONS" => return Outcome::Reply(preflight()),
            _ => {
                return Outcome::Reply(
                    Response::res(405, "method not allowed").with_header("Allow", ALLOWED_METHODS),
                );
            }
        }
        let params = match params::extract(
            request.query(),
            request.header("content-type"),
            &request.body,
        ) {
            Ok(params) => params,
            Err(ParamError::Invalid(error)) => return Outcome::Reply(invalid(error)),
            Err(ParamError::UnsupportedMediaType(error)) => {
                return Outcome::Reply(Response::res_with_error(
                    415,
                    "unsupported media type",
                    &error,
                ));
            }
        };
        let result = match endpoint {
            Endpoint::Register => self.register(conn, &params),
            Endpoint::Login => self.login(conn, &params, client_key(from), now),
            Endpoint::List => Ok(Outcome::Reply(self.list())),
            Endpoint::Create => self.create(conn, &params, now),
            Endpoint::Room => self.room(&params, now),
            Endpoint::UserData => self.user_data(&params),
            Endpoint::History => self.history(request, &params, now),
            Endpoint::Members => self.members(request, &params, now),
            Endpoint::Health => Ok(Outcome::Reply(Response::json(
                200,
                &serde_json::json!({"status": "ok"}),
            ))),
        };
        result.unwrap_or_else(Outcome::Reply)
    }

    fn password_job(&mut self, wait: PasswordWait, job: PasswordJob) -> Result<Outcome, Response> {
        if self.password_waits.len() >= self.config.max_pending_hashes {
            return Err(Response::res(503, "server busy").with_header("Retry-After", "1"));
        }
        let id = self.next_job;
        self.next_job += 1;
        self.password_waits.insert(id, wait);
        self.password_jobs.push((id, job));
        Ok(Outcome::Pending)
    }

    fn register(&mut self, conn: ConnRef, params: &Params) -> Result<Outcome, Response> {
        let tel = required_tel(params)?;
        let tel = tel.as_ref();
        let name = required(params, "user_name", validate::user_name)?;
        let password = required(params, "user_password", validate::user_password)?;
        let avatar_url = params.get("user_avatar_url").unwrap_or("");
        validate::user_avatar_url(avatar_url)
            .map_err(|why| invalid(format!("user_avatar_url: {why}")))?;
        if self.state.reserve_user(tel, name) == Taken::Exists {
            return Ok(Outcome::Reply(Response::res(200, "user exist")));
        }
        let wait = PasswordWait::Register {
            conn,
            tel: tel.to_string(),
            name: name.to_string(),
            avatar_url: avatar_url.to_string(),
        };
        let job = PasswordJob::Hash {
            password: password.to_string(),
        };
        self.password_job(wait, job)
            .inspect_err(|_| self.state.release_user(tel, name))
    }

    fn login(
        &mut self,
        conn: ConnRef,
        params: &Params,
        client: IpAddr,
        now: Now,
    ) -> Result<Outcome, Response> {
        let tel = required_tel(params)?;
        // Present but empty is a wrong password, not a malformed request.
        let password = params
            .get("user_password")
            .ok_or_else(|| invalid("user_password: required".to_string()))?;
        if self.login_failures_by_client.is_blocked(&client, now.mono) {
            return Ok(Outcome::Reply(login_failure("too many attempts")));
        }
        let Some(user) = self.state.user_id_by_tel(&tel) else {
            self.login_failures_by_client.record(&client, now.mono);
            return Ok(Outcome::Reply(login_failure("user not exist")));
        };
        if self.login_failures_by_user.is_blocked(&user, now.mono) {
            return Ok(Outcome::Reply(login_failure("too many attempts")));
        }
        if !validate::could_be_password(password) {
            // No registered password has this length: wrong without a hash,
            // and counted like any other wrong guess.
            self.login_failures_by_user.record(&user, now.mono);
            self.login_failures_by_client.record(&client, now.mono);
            return Ok(Outcome::Reply(login_failure("password wrong")));
        }
        let phc = self
            .state
            .user(user)
            .map(|u| u.password_hash.clone())
            .unwrap_or_default();
        let job = PasswordJob::Verify {
            password: password.to_string(),
            phc,
        };
        let outcome = self.password_job(PasswordWait::Login { conn, user, client }, job)?;
        self.login_failures_by_user.record(&user, now.mono);
        self.login_failures_by_client.record(&client, now.mono);
        Ok(outcome)
    }

    fn list(&self) -> Response {
        let entries: Vec<RoomEntry> = self
            .state
            .rooms()
            .map(|room| RoomEntry {
                name: &room.name,
                room_name: &room.name,
                population: room.population(),
            })
            .collect();
        let list = RoomList {
            rooms: &entries,
            room_list: &entries,
        };
        Response::json(200, &list).with_outcome("list")
    }

    /// `/auth/user_data`: a public profile by phone number (preferred) or
    /// name; never a password or a token.
    fn user_data(&self, params: &Params) -> Result<Outcome, Response> {
        let user = match params.get("user_tel").filter(|tel| !tel.is_empty()) {
            Some(_) => self.state.user_id_by_tel(&required_tel(params)?),
            None => match params.get("user_name").filter(|name| !name.is_empty()) {
                Some(_) => {
                    let name = required(params, "user_name", validate::user_name)?;
                    self.state.user_id_by_name(name)
                }
                None => {
                    return Err(invalid(
                        "user_tel or user_name: one is required".to_string(),
                    ))
                }
            },
        };
        let Some(user) = user.and_then(|id| self.state.user(id)) else {
            let reply = UserDataReply {
                res: "user not exist",
                data: None,
            };
            return Ok(Outcome::Reply(
                Response::json(200, &reply).with_outcome("user not exist"),
            ));
        };
        let profile = Profile {
            user_tel: validate::tel_as_i32(&user.tel),
            user_name: &user.name,
            user_avatar_url: &user.avatar_url,
        };
        let reply = UserDataReply {
            res: "get user data successfully",
            data: Some(UserData {
                profile: &profile,
                user: &profile,
            }),
        };
        Ok(Outcome::Reply(
            Response::json(200, &reply).with_outcome("get user data successfully"),
        ))
    }

    fn create(&mut self, conn: ConnRef, params: &Params, now: Now) -> Result<Outcome, Response> {
        let name = required(params, "room_name", validate::room_name)?;
        let capacity = parse_capacity(params, self.config.room_capacity)?;
        match self.state.reserve_room(name, self.config.max_rooms) {
            RoomReservation::Exists => {
                Ok(Outcome::Reply(Response::res(200, "chatroom already exist")))
            }
            RoomReservation::TooMany => Ok(Outcome::Reply(Response::res(200, "too many rooms"))),
            RoomReservation::Reserved => {
                let record = Record::Room(RoomRecord {
                    name: name.to_string(),
                    capacity,
                    created_ms: now.unix_ms,
                });
                self.unsubmitted.push(PersistWait { conn, record });
                Ok(Outcome::Pending)
            }
        }
    }

    fn room(&mut self, params: &Params, now: Now) -> Result<Outcome, Response> {
        let room_name = required(params, "room_name", validate::room_name)?;
        let user_name = required(params, "user_name", validate::user_name)?;
        let status = required(params, "status", non_empty)?;
        let reply = |res: &'static str| Ok(Outcome::Reply(Response::res(200, res)));
        let Some(room) = self.state.room_id(room_name) else {
            return reply("invalid room");
        };
        match status {
            "1" => {
                let Some(user) = self.state.user_id_by_name(user_name) else {
                    return reply("user not exist");
                };
                match self.state.admit(room, user, now.mono) {
                    Admission::Joined => reply("join chatroom"),
                    Admission::Full => reply("full room"),
                }
            }
            "0" => {
                let Some(user) = self.state.user_id_by_name(user_name) else {
                    return reply("user not exist");
                };
                if self.release_seat_and_evict(room, user, now)
                    || self.state.take_recent_ws_leave(room, user, now.mono)
                {
                    reply("leave chatroom")
                } else {
                    reply("user not exist")
                }
            }
            _ => reply("invalid status"),
        }
    }

    /// Password jobs wait to go to the pool.
    pub fn has_password_jobs(&self) -> bool {
        !self.password_jobs.is_empty()
    }

    /// Password jobs to hand to the pool (drained).
    pub fn take_password_jobs(&mut self) -> Vec<(JobId, PasswordJob)> {
        std::mem::take(&mut self.password_jobs)
    }

    /// Every record queued since the last call, as one batch: one reactor
    /// turn's writes share one fsync.
    pub fn take_persist_batch(&mut self) -> Option<(BatchId, Vec<Record>)> {
        if self.unsubmitted.is_empty() {
            return None;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let waits = std::mem::take(&mut self.unsubmitted);
        let records = waits.iter().map(|wait| wait.record.clone()).collect();
        self.batches.insert(batch, waits);
        Some((batch, records))
    }

    pub fn on_password_done(
        &mut self,
        job: JobId,
        outcome: PasswordOutcome,
        now: Now,
    ) -> Option<(ConnRef, Response)> {
        let wait = self.password_waits.remove(&job)?;
        match (wait, outcome) {
            (
                PasswordWait::Register {
                    conn,
                    tel,
                    name,
                    avatar_url,
                },
                PasswordOutcome::Hashed(hashed),
            ) => match hashed {
                Ok(password_hash) => {
                    let record = Record::User(UserRecord {
                        tel,
                        name,
                        password_hash,
                        avatar_url,
                        created_ms: now.unix_ms,
                    });
                    self.unsubmitted.push(PersistWait { conn, record });
                    None
                }
                Err(error) => {
                    log::error!("password hashing failed: {error}");
                    self.state.release_user(&tel, &name);
                    Some((conn, Response::res(500, "internal error")))
                }
            },
            (PasswordWait::Login { conn, user, client }, PasswordOutcome::Verified(true)) => {
                self.login_failures_by_user.clear(&user);
                self.login_failures_by_client.forgive_one(&client);
                Some((conn, self.login_success(user, now)))
            }
            (PasswordWait::Login { conn, .. }, PasswordOutcome::Verified(false)) => {
                Some((conn, login_failure("password wrong")))
            }
            (
                PasswordWait::Register {
                    conn, tel, name, ..
                },
                PasswordOutcome::Verified(_),
            ) => {
                self.state.release_user(&tel, &name);
                Some((conn, Response::res(500, "internal error")))
            }
            (PasswordWait::Login { conn, .. }, PasswordOutcome::Hashed(_)) => {
                Some((conn, Response::res(500, "internal error")))
            }
        }
    }

    fn login_success(&mut self, user: UserId, now: Now) -> Response {
        let token = match self.tokens.issue(user, now.mono) {
            Ok(token) => token,
            Err(error) => {
                log::error!("{error}");
                return Response::res(500, "internal error");
            }
        };
        let Some(profile) = self.state.user(user) else {
            return Response::res(500, "internal error");
        };
        Response::json(
            200,
            &LoginReply {
                res: "login successfully",
                data: Some(LoginData {
                    user_tel: validate::tel_as_i32(&profile.tel),
                    user_name: &profile.name,
                    user_avatar_url: &profile.avatar_url,
                    token: &token,
                }),
            },
        )
        .with_outcome("login successfully")
    }

    /// A batch reached the disk, or failed to: the replies it held back.
    pub fn on_batch_done(&mut self, completion: Completion) -> Vec<(ConnRef, Response)> {
        let Some(waits) = self.batches.remove(&completion.batch) else {
            return Vec::new();
        };
        if let Err(error) = &completion.result {
            log::error!(
                "storage write failed, {} record(s) not acknowledged: {error}",
                waits.len()
            );
        }
        waits
            .into_iter()
            .map(|wait| {
                let durable = completion.result.is_ok();
                let response = match wait.record {
                    Record::User(user) if durable => {
                        self.state.add_user(user);
                        Response::res(200, "register successfully")
                    }
                    Record::User(user) => {
                        self.state.release_user(&user.tel, &user.name);
                        Response::res(503, "storage unavailable")
                    }
                    Record::Room(room) if durable => {
                        self.state.add_room(room);
                        Response::res(200, "chatroom create successfully")
                    }
                    Record::Room(room) => {
                        self.state.release_room(&room.name);
                        Response::res(503, "storage unavailable")
                    }
                };
                (wait.conn, response)
            })
            .collect()
    }

    /// Time-driven work: seat expiry and token purging.
    pub fn tick(&mut self, now: Now) {
        self.state.expire_seats(now.mono);
        let purge_due = self.last_token_purge.is_none_or(|last| {
            now.mono.duration_since(last) >= std::time::Duration::from_secs(3600)
        });
        if purge_due {
            self.tokens.purge_expired(now.mono);
            self.login_failures_by_user.prune(now.mono);
            self.login_failures_by_client.prune(now.mono);
            self.last_token_purge = Some(now.mono);
        }
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.state.next_seat_expiry()
    }

    /// Work still owed to clients: password jobs or writes in flight.
    pub fn has_pending_work(&self) -> bool {
        !self.password_waits.is_empty()
            || !self.batches.is_empty()
            || !self.unsubmitted.is_empty()
            || self.messages.has_unwritten()
    }
}

#[cfg(test)]
mod tests;
