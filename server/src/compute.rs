//! The CPU-heavy task of the seeds, shared by `GET /compute?n=N` and gRPC
//! `BackendService.Compute`, so both read `N` and compute fib(N) the same way.

use std::fmt;

/// The largest `n` taken: fib(40) by the naive recursion is seconds of CPU.
pub const MAX_N: u32 = 40;

/// An `N` that is not a whole number from 0 to `MAX_N`, as it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadN(pub String);

impl fmt::Display for BadN {
    /// Without the subject, so that each caller names its own (`n`, `task`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "must be a whole number from 0 to {MAX_N}, not '{}'",
            self.0
        )
    }
}

impl std::error::Error for BadN {}

/// `N` as decimal text, from 0 to `MAX_N`.
pub fn parse_n(text: &str) -> Result<u32, BadN> {
    text.parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_N)
        .ok_or_else(|| BadN(text.to_string()))
}

/// Fibonacci by the naive recursion, on purpose: the CPU-heavy task of the seeds.
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_is_a_whole_number_from_0_to_40() {
        assert_eq!(parse_n("0"), Ok(0));
        assert_eq!(parse_n("20"), Ok(20));
        assert_eq!(parse_n("40"), Ok(40));
        for bad in ["41", "-1", "x", "", " 3", "2.5", "99999999999"] {
            assert_eq!(parse_n(bad), Err(BadN(bad.to_string())), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_n_says_what_was_given_and_what_is_taken() {
        assert_eq!(
            BadN("41".into()).to_string(),
            "must be a whole number from 0 to 40, not '41'"
        );
    }

    #[test]
    fn fib_is_the_fibonacci_sequence() {
        let firsts: Vec<u64> = (0..10).map(fib).collect();
        assert_eq!(firsts, [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]);
        assert_eq!(fib(20), 6765);
    }
}
