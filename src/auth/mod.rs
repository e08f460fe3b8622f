//! Passwords (argon2id on worker threads) and login tokens.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;

/// Caller-chosen id tying a job to its result.
pub type JobId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordJob {
    /// Hash a new password with a fresh salt into a PHC string.
    Hash { password: String },
    /// Check a password against a stored PHC string.
    Verify { password: String, phc: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordOutcome {
    Hashed(Result<String, String>),
    Verified(bool),
}

/// argon2id cost settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

fn argon2_for(cost: HashCost) -> Result<Argon2<'static>, String> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| format!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks the cost settings once at start-up so a bad flag fails loudly.
pub fn validate_cost(cost: HashCost) -> Result<(), String> {
    argon2_for(cost).map(|_| ())
}

pub fn hash_password(password: &str, cost: HashCost) -> Result<String, String> {
    let argon2 = argon2_for(cost)?;
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| format!("salt: {e}"))?;
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

/// The PHC string carries its own parameters, so hashes made under an older
/// cost setting still verify.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

fn run_job(job: PasswordJob, cost: HashCost) -> PasswordOutcome {
    match job {
        PasswordJob::Hash { password } => PasswordOutcome::Hashed(hash_password(&password, cost)),
        PasswordJob::Verify { password, phc } => {
            PasswordOutcome::Verified(verify_password(&password, &phc))
        }
    }
}

/// A fixed set of threads running password jobs off the reactor.
pub struct HashPool {
    jobs: Option<Sender<(JobId, PasswordJob)>>,
    threads: Vec<JoinHandle<()>>,
}

type JobQueue = Mutex<Receiver<(JobId, PasswordJob)>>;

fn run_worker(
    queue: &JobQueue,
    notify: &(dyn Fn(JobId, PasswordOutcome) + Send + Sync),
    cost: HashCost,
) {
    loop {
        // Holding the lock only for the receive lets the other workers take
        // the next job while this one hashes.
        let next = match queue.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match next {
            Ok((id, job)) => notify(id, run_job(job, cost)),
            Err(_) => return,
        }
    }
}

/// A hash is tens of milliseconds of CPU. At the lowest priority the
/// workers take only what the reactor leaves, so on a one-core box a storm
/// of logins slows logins, not chat delivery; they are never starved, as
/// the lowest nice level still gets a share under full load.
fn lowest_cpu_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers, and setpriority with
    // our own thread id changes only this thread's nice value. Failure
    // leaves the default priority, which is still correct.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 19);
    }
}

impl HashPool {
    /// `notify` runs on a worker thread once per finished job.
    pub fn spawn(
        threads: usize,
        cost: HashCost,
        notify: Arc<dyn Fn(JobId, PasswordOutcome) + Send + Sync>,
    ) -> std::io::Result<HashPool> {
        let (jobs, queue) = mpsc::channel::<(JobId, PasswordJob)>();
        let queue: Arc<JobQueue> = Arc::new(Mutex::new(queue));
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            let notify = Arc::clone(&notify);
            let handle = std::thread::Builder::new()
                .name(format!("password-{index}"))
                .spawn(move || {
                    lowest_cpu_priority();
                    run_worker(&queue, &*notify, cost);
                })?;
            handles.push(handle);
        }
        Ok(HashPool {
            jobs: Some(jobs),
            threads: handles,
        })
    }

    pub fn submit(&self, id: JobId, job: PasswordJob) {
        if let Some(jobs) = &self.jobs {
            // The workers only stop when this sender is dropped, so a send
            // cannot fail while the pool is alive.
            let _ = jobs.send((id, job));
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.jobs = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

pub const TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Logins beyond this many live tokens per user retire the oldest, so the
/// table stays bounded by the number of users.
pub const MAX_TOKENS_PER_USER: usize = 16;

/// A fresh login token: 128 random bits, URL-safe base64.
pub fn new_token() -> Result<String, String> {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bits))
}

/// Opaque login tokens, held in memory only.
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, (u32, Instant)>,
    by_user: HashMap<u32, Vec<String>>,
}

impl Tokens {
    /// Issues a fresh token for `user`: 128 random bits, URL-safe base64.
    pub fn issue(&mut self, user: u32, now: Instant) -> Result<String, String> {
        let token = new_token()?;
        let issued = self.by_user.entry(user).or_default();
        issued.retain(|t| {
            self.by_token
                .get(t)
                .is_some_and(|(_, expires)| *expires > now)
        });
        if issued.len() >= MAX_TOKENS_PER_USER {
            let oldest = issued.remove(0);
            self.by_token.remove(&oldest);
        }
        issued.push(token.clone());
        self.by_token
            .insert(token.clone(), (user, now + TOKEN_LIFETIME));
        Ok(token)
    }

    /// The user a token belongs to, if it is known and unexpired.
    pub fn user_of(&self, token: &str, now: Instant) -> Option<u32> {
        match self.by_token.get(token) {
            Some((user, expires)) if *expires > now => Some(*user),
            _ => None,
        }
    }

    /// Drops expired tokens; called now and then, not per request.
    pub fn purge_expired(&mut self, now: Instant) {
        self.by_token.retain(|_, (_, expires)| *expires > now);
        let by_token = &self.by_token;
        self.by_user.retain(|_, issued| {
            issued.retain(|t| by_token.contains_key(t));
            !issued.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
    };

    #[test]
    fn hash_is_salted_argon2id_phc_and_verifies() {
        let first = hash_password("correct horse", CHEAP).unwrap();
        let second = hash_password("correct horse", CHEAP).unwrap();
        assert!(first.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(verify_password("correct horse", &first));
        assert!(!verify_password("wrong horse", &first));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_runs_at_the_lowest_cpu_priority() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool = HashPool::spawn(
            1,
            CHEAP,
            Arc::new(move |_, _| {
                // SAFETY: no pointers; reads this worker thread's nice value.
                let nice =
                    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
                let _ = tx.lock().unwrap().send(nice);
            }),
        )
        .unwrap();
        pool.submit(
            1,
            PasswordJob::Hash {
                password: "secret".into(),
            },
        );
        assert_eq!(rx.recv().unwrap(), 19);
    }

    #[test]
    fn pool_reports_every_job() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let pool = HashPool::spawn(
            2,
            CHEAP,
            Arc::new(move |id, outcome| {
                let _ = tx.lock().unwrap().send((id, outcome));
            }),
        )
        .unwrap();
        pool.submit(
            1,
            PasswordJob::Hash {
                password: "secret1".into(),
            },
        );
        let (id, outcome) = rx.recv().unwrap();
        assert_eq!(id, 1);
        let PasswordOutcome::Hashed(Ok(phc)) = outcome else {
            panic!("expected a hash, got {outcome:?}");
        };
        pool.submit(
            2,
            PasswordJob::Verify {
                password: "secret1".into(),
                phc: phc.clone(),
            },
        );
        pool.submit(
            3,
            PasswordJob::Verify {
                password: "secret2".into(),
                phc,
            },
        );
        let mut results: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
        results.sort_by_key(|(id, _)| *id);
        assert_eq!(
            results,
            vec![
                (2, PasswordOutcome::Verified(true)),
                (3, PasswordOutcome::Verified(false))
            ]
        );
    }

    #[test]
    fn tokens_are_random_bounded_and_expire() {
        let now = Instant::now();
        let mut tokens = Tokens::default();
        let token = tokens.issue(7, now).unwrap();
        assert_eq!(token.len(), 22, "128 bits in unpadded base64");
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(tokens.user_of(&token, now), Some(7));
        assert_eq!(tokens.user_of(&token, now + TOKEN_LIFETIME), None);
        assert_eq!(tokens.user_of("forged", now), None);
        for _ in 0..MAX_TOKENS_PER_USER {
            tokens.issue(7, now).unwrap();
        }
        assert_eq!(tokens.len(), MAX_TOKENS_PER_USER);
        assert_eq!(
            tokens.user_of(&token, now),
            None,
            "the oldest token was retired"
        );
        tokens.purge_expired(now + TOKEN_LIFETIME);
        assert!(tokens.is_empty());
    }
}
