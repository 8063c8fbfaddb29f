//! argon2id hashing of the token's secret part. The stored value is a PHC string, so the
//! parameters can change over time; a verify reports when a stored hash needs a rehash.

use std::fmt;

use std::cell::RefCell;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::PlainToken;

thread_local! {
    /// Per-thread argon2 working memory, grown to the largest m seen and reused.
    static WORKING_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2id cost parameters: m=1024 KiB, t=1, p=1 by default.
///
/// A token secret is 32 base-62 characters from the OS RNG (about 190 bits): a stolen hash
/// cannot be brute-forced at any hash cost, so argon2's cost buys no protection here (it
/// protects low-entropy passwords). What it does cost is CPU on every first use of a token
/// per replica, every new replica of a rolling deploy and every wrong-secret guess; the
/// OWASP password setting (m=19456, t=2) is 50 times the light one (docs/benchmarks.md,
/// "What argon2 costs here, and what it buys"). Still argon2id and salted, so a stored PHC
/// string at any parameters keeps verifying, and is rehashed on its next successful verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }
}

/// The stored PHC string of a token's secret. Not a secret itself, but kept out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    /// Wraps a PHC string read from the store.
    pub fn from_stored(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// The outcome of checking a token against its stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The secret matches; `needs_rehash` when the stored parameters differ from ours.
    Match {
        /// The stored hash was made with other parameters.
        needs_rehash: bool,
    },
    /// The secret does not match.
    Mismatch,
}

/// Hashing errors: invalid parameters, or a stored hash we cannot read.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The configured parameters are out of argon2's range.
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    /// The stored hash is not a readable argon2 PHC string.
    #[error("stored hash is not a valid argon2 PHC string")]
    Corrupt,
    /// Hashing failed (e.g. the OS RNG for the salt).
    #[error("argon2 hashing failed")]
    Hashing,
}

/// argon2id hasher with the configured parameters.
#[derive(Clone)]
pub struct TokenHasher {
    params: Params,
}

impl fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHasher")
            .field("m_cost", &self.params.m_cost())
            .field("t_cost", &self.params.t_cost())
            .field("p_cost", &self.params.p_cost())
            .finish()
    }
}

impl TokenHasher {
    /// A hasher with these parameters, checked now so a bad config fails at start-up.
    pub fn new(params: HashParams) -> Result<Self, HashError> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(HashError::Params)?;
        Ok(Self { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes the token's secret part with a fresh random salt. CPU-heavy: call it off the
    /// async runtime.
    pub fn hash(&self, token: &PlainToken) -> Result<SecretHash, HashError> {
        let hash = self
            .argon2()
            .hash_password(token.secret_part())
            .map_err(|_| HashError::Hashing)?;
        Ok(SecretHash(hash.to_string()))
    }

    /// Verifies the token's secret part against a stored hash, with the stored parameters.
    /// CPU-heavy: call it off the async runtime.
    pub fn verify(
        &self,
        token: &PlainToken,
        stored: &SecretHash,
    ) -> Result<Verification, HashError> {
        let parsed = PasswordHash::new(stored.as_str()).map_err(|_| HashError::Corrupt)?;
        let stored_params = Params::try_from(&parsed).map_err(|_| HashError::Corrupt)?;
        let algorithm =
            Algorithm::try_from(parsed.algorithm.as_str()).map_err(|_| HashError::Corrupt)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|_| HashError::Corrupt)?
            .unwrap_or_default();
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return Err(HashError::Corrupt);
        };
        let mut computed = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, stored_params.clone());
        // argon2's working memory (m KiB) is kept per thread and reused: allocating and
        // faulting in ~19 MiB per verify cost CPU and contended the process's memory map,
        // which showed as latency on the warm path during floods of cold verifies.
        WORKING_MEMORY
            .with(|memory| {
                let mut memory = memory.borrow_mut();
                let blocks = stored_params.block_count();
                if memory.len() < blocks {
                    memory.resize(blocks, Block::default());
                }
                argon2.hash_password_into_with_memory(
                    token.secret_part(),
                    salt.as_ref(),
                    &mut computed,
                    &mut memory[..blocks],
                )
            })
            .map_err(|_| HashError::Corrupt)?;
        if bool::from(computed.ct_eq(expected.as_bytes())) {
            Ok(Verification::Match {
                needs_rehash: algorithm != Algorithm::Argon2id
                    || stored_params.m_cost() != self.params.m_cost()
                    || stored_params.t_cost() != self.params.t_cost()
                    || stored_params.p_cost() != self.params.p_cost(),
            })
        } else {
            Ok(Verification::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> HashParams {
        HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn a_hash_verifies_its_own_token_and_no_other() {
        let hasher = TokenHasher::new(fast()).unwrap();
        let token = PlainToken::generate();
        let hash = hasher.hash(&token).unwrap();
        assert_eq!(
            hasher.verify(&token, &hash).unwrap(),
            Verification::Match {
                needs_rehash: false
            }
        );
        let other = PlainToken::generate();
        assert_eq!(
            hasher.verify(&other, &hash).unwrap(),
            Verification::Mismatch
        );
    }

    #[test]
    fn the_stored_hash_is_argon2id_phc_and_holds_no_secret() {
        let hasher = TokenHasher::new(fast()).unwrap();
        let token = PlainToken::generate();
        let hash = hasher.hash(&token).unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let secret = std::str::from_utf8(token.secret_part()).unwrap();
        assert!(!hash.as_str().contains(secret));
        assert_eq!(format!("{hash:?}"), "SecretHash(..)");
    }

    #[test]
    fn salts_differ_between_hashes_of_one_token() {
        let hasher = TokenHasher::new(fast()).unwrap();
        let token = PlainToken::generate();
        assert_ne!(hasher.hash(&token).unwrap(), hasher.hash(&token).unwrap());
    }

    #[test]
    fn changed_parameters_ask_for_a_rehash() {
        let old = TokenHasher::new(fast()).unwrap();
        let new = TokenHasher::new(HashParams {
            memory_kib: 128,
            ..fast()
        })
        .unwrap();
        let token = PlainToken::generate();
        let hash = old.hash(&token).unwrap();
        assert_eq!(
            new.verify(&token, &hash).unwrap(),
            Verification::Match { needs_rehash: true }
        );
    }

    #[test]
    fn reused_working_memory_gives_the_same_answers_across_parameters() {
        let small = TokenHasher::new(fast()).unwrap();
        let large = TokenHasher::new(HashParams {
            memory_kib: 256,
            iterations: 2,
            ..fast()
        })
        .unwrap();
        let token = PlainToken::generate();
        let other = PlainToken::generate();
        let (h_small, h_large) = (small.hash(&token).unwrap(), large.hash(&token).unwrap());
        // One thread, memory grown by the large hash and then reused for the small one.
        for _ in 0..2 {
            for (hasher, hash) in [(&large, &h_large), (&small, &h_small)] {
                assert!(matches!(
                    hasher.verify(&token, hash).unwrap(),
                    Verification::Match { .. }
                ));
                assert_eq!(hasher.verify(&other, hash).unwrap(), Verification::Mismatch);
            }
        }
        // And a hash made by the argon2 crate's own verifier agrees with ours.
        use argon2::PasswordVerifier;
        let parsed = PasswordHash::new(h_large.as_str()).unwrap();
        assert!(
            large
                .argon2()
                .verify_password(token.secret_part(), &parsed)
                .is_ok()
        );
    }

    #[test]
    fn a_corrupt_stored_hash_is_an_error_not_a_match() {
        let hasher = TokenHasher::new(fast()).unwrap();
        let token = PlainToken::generate();
        let corrupt = SecretHash::from_stored("not a phc string".into());
        assert!(matches!(
            hasher.verify(&token, &corrupt),
            Err(HashError::Corrupt)
        ));
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        assert!(
            TokenHasher::new(HashParams {
                memory_kib: 1,
                iterations: 1,
                parallelism: 1
            })
            .is_err()
        );
        assert!(
            TokenHasher::new(HashParams {
                iterations: 0,
                ..HashParams::default()
            })
            .is_err()
        );
    }
}
