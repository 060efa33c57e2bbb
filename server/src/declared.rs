//! What a replica declares about itself, for the balancer's `weighted-round-robin`
//! and `resource-fit` policies: a weight and resource capacities (`cpu=4,storage=2`).
//! They are set by `--weight` and `--capacity`, changed through `/control`, and
//! reported by `/heartbeat` as `X-Weight` and `X-Capacity`.
//!
//! Parsing and formatting are pure so that the flag, `/control` and the unit tests
//! share one definition of what is valid; `Declared` only holds the current value.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

/// The lightest and heaviest weight: a share of 1 to 100 is plenty of resolution for
/// a round robin, and a bound keeps a typo from starving every other replica.
pub const WEIGHTS: std::ops::RangeInclusive<u64> = 1..=100;
/// The most resources one replica may declare, so a heartbeat header stays small.
pub const MAX_RESOURCES: usize = 16;
/// The longest resource name.
pub const MAX_NAME_LEN: usize = 32;
/// The largest amount of one resource: far above any real machine, low enough that
/// sums over a fleet stay exact enough in an `f64`.
pub const MAX_AMOUNT: f64 = 1e9;

/// A replica's share of a weighted round robin, from 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(u8);

/// A weight outside 1..=100, or not a whole number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightError(pub String);

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weight must be a whole number from {} to {}, not '{}'",
            WEIGHTS.start(),
            WEIGHTS.end(),
            self.0
        )
    }
}

impl std::error::Error for WeightError {}

impl Default for Weight {
    /// Every replica counts the same unless told otherwise.
    fn default() -> Self {
        Weight(1)
    }
}

impl Weight {
    /// The weight as a number, for `/control` to show.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u64> for Weight {
    type Error = WeightError;

    fn try_from(n: u64) -> Result<Self, WeightError> {
        u8::try_from(n)
            .ok()
            .filter(|_| WEIGHTS.contains(&n))
            .map(Weight)
            .ok_or_else(|| WeightError(n.to_string()))
    }
}

impl FromStr for Weight {
    type Err = WeightError;

    fn from_str(s: &str) -> Result<Self, WeightError> {
        let n = s.parse::<u64>().map_err(|_| WeightError(s.to_string()))?;
        Weight::try_from(n)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Resource capacities by name, e.g. `cpu=4,storage=2`; empty when none are declared.
/// Names are kept sorted, so one set of capacities has one written form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity(BTreeMap<String, f64>);

/// Why a capacity spec was refused; each names the part at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum CapacityError {
    /// Two commas in a row, or one at either end.
    EmptyEntry,
    /// An entry without `=`.
    NotAPair(String),
    /// A name that is not `[a-z][a-z0-9_-]*` of at most 32 characters.
    BadName(String),
    /// An amount that is not a finite number above 0 and at most 1e9.
    BadAmount { name: String, amount: String },
    /// The same name twice.
    Duplicate(String),
    /// More than 16 resources.
    TooMany(usize),
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapacityError::EmptyEntry => {
                write!(f, "capacity has an empty entry (expected name=number,...)")
            }
            CapacityError::NotAPair(entry) => {
                write!(f, "capacity entry '{entry}' is not name=number")
            }
            CapacityError::BadName(name) => write!(
                f,
                "resource name '{name}' must be a lowercase letter then lowercase \
                 letters, digits, '_' or '-', at most {MAX_NAME_LEN} characters"
            ),
            CapacityError::BadAmount { name, amount } => write!(
                f,
                "the amount of resource '{name}' must be a number above 0 and at most \
                 {MAX_AMOUNT}, not '{amount}'"
            ),
            CapacityError::Duplicate(name) => {
                write!(f, "resource '{name}' is declared twice")
            }
            CapacityError::TooMany(n) => write!(
                f,
                "capacity declares {n} resources, at most {MAX_RESOURCES} are allowed"
            ),
        }
    }
}

impl std::error::Error for CapacityError {}

/// Whether `name` is `[a-z][a-z0-9_-]*` of at most `MAX_NAME_LEN` characters: what
/// a header value and the balancer's flags can carry without quoting.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// An amount: finite, above 0 and at most `MAX_AMOUNT`.
fn parse_amount(name: &str, amount: &str) -> Result<f64, CapacityError> {
    amount
        .parse::<f64>()
        .ok()
        .filter(|a| a.is_finite() && *a > 0.0 && *a <= MAX_AMOUNT)
        .ok_or_else(|| CapacityError::BadAmount {
            name: name.to_string(),
            amount: amount.to_string(),
        })
}

/// One `name=number` entry.
fn parse_entry(entry: &str) -> Result<(&str, f64), CapacityError> {
    if entry.is_empty() {
        return Err(CapacityError::EmptyEntry);
    }
    let (name, amount) = entry
        .split_once('=')
        .ok_or_else(|| CapacityError::NotAPair(entry.to_string()))?;
    if !valid_name(name) {
        return Err(CapacityError::BadName(name.to_string()));
    }
    Ok((name, parse_amount(name, amount)?))
}

impl FromStr for Capacity {
    type Err = CapacityError;

    /// `name=number,name=number`; the empty string declares nothing.
    fn from_str(spec: &str) -> Result<Self, CapacityError> {
        let mut resources = BTreeMap::new();
        if spec.is_empty() {
            return Ok(Capacity(resources));
        }
        let entries: Vec<&str> = spec.split(',').collect();
        if entries.len() > MAX_RESOURCES {
            return Err(CapacityError::TooMany(entries.len()));
        }
        for entry in entries {
            let (name, amount) = parse_entry(entry)?;
            if resources.insert(name.to_string(), amount).is_some() {
                return Err(CapacityError::Duplicate(name.to_string()));
            }
        }
        Ok(Capacity(resources))
    }
}

impl fmt::Display for Capacity {
    /// The canonical form: names sorted, amounts as Rust prints an `f64` (`4`, `0.5`),
    /// which parses back to the same amounts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, amount)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={amount}")?;
        }
        Ok(())
    }
}

impl Capacity {
    /// Whether no resource is declared (then `/heartbeat` sends no `X-Capacity`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Everything a replica declares at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declaration {
    pub weight: Weight,
    pub capacity: Capacity,
}

/// A checked change from `/control`: the fields given replace the current ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub weight: Option<Weight>,
    pub capacity: Option<Capacity>,
}

/// The declaration in force, shared by the workers. Only `/heartbeat` and `/control`
/// read it, never the ordinary requests, and a lock is held just long enough to copy
/// or swap an `Arc`, so a lock is enough.
#[derive(Debug, Default)]
pub struct Declared(RwLock<Arc<Declaration>>);

impl Declared {
    pub fn new(declaration: Declaration) -> Self {
        Declared(RwLock::new(Arc::new(declaration)))
    }

    /// The declaration in force. A panic elsewhere cannot leave a half-written one
    /// (writers only swap the `Arc`), so a poisoned lock is still read.
    pub fn current(&self) -> Arc<Declaration> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies a checked change in one step, so a heartbeat never sees half of it,
    /// and returns the declaration now in force.
    pub fn apply(&self, change: Change) -> Arc<Declaration> {
        let mut slot = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Declaration::clone(&slot);
        if let Some(w) = change.weight {
            next.weight = w;
        }
        if let Some(c) = change.capacity {
            next.capacity = c;
        }
        *slot = Arc::new(next);
        slot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(spec: &str) -> Result<Capacity, CapacityError> {
        spec.parse()
    }

    #[test]
    fn a_weight_from_1_to_100_is_taken() {
        assert_eq!("1".parse::<Weight>().unwrap().get(), 1);
        assert_eq!("100".parse::<Weight>().unwrap().get(), 100);
        assert_eq!(Weight::try_from(7).unwrap().to_string(), "7");
        assert_eq!(Weight::default().get(), 1);
    }

    #[test]
    fn a_weight_outside_1_to_100_or_not_whole_is_refused() {
        for bad in ["0", "101", "256", "-1", "1.5", "", " 3", "x"] {
            assert!(bad.parse::<Weight>().is_err(), "{bad:?}");
        }
        assert!(Weight::try_from(0).is_err());
        assert!(Weight::try_from(101).is_err());
        assert!(Weight::try_from(u64::MAX).is_err());
    }

    #[test]
    fn an_empty_spec_declares_nothing() {
        let none = capacity("").unwrap();
        assert!(none.is_empty());
        assert_eq!(none.to_string(), "");
    }

    #[test]
    fn a_valid_spec_is_read_whatever_its_order() {
        let c = capacity("storage=2,cpu=4").unwrap();
        assert_eq!(c, capacity("cpu=4,storage=2").unwrap());
        assert_eq!(c.0["cpu"], 4.0);
        assert_eq!(c.0["storage"], 2.0);
        let odd = capacity("gpu_mem-2=0.5,a=1e9,b9=1e-3").unwrap();
        assert_eq!(odd.0["gpu_mem-2"], 0.5);
        assert_eq!(odd.0["a"], 1e9);
        assert_eq!(odd.0["b9"], 0.001);
    }

    #[test]
    fn the_canonical_form_sorts_names_and_prints_amounts_plainly() {
        assert_eq!(
            capacity("storage=2.0,cpu=4").unwrap().to_string(),
            "cpu=4,storage=2"
        );
        assert_eq!(
            capacity("mem=1e9,cpu=0.25").unwrap().to_string(),
            "cpu=0.25,mem=1000000000"
        );
    }

    #[test]
    fn the_canonical_form_parses_back_to_the_same_capacity() {
        for spec in [
            "cpu=4,storage=2",
            "b=0.1,a=3.3333333333333335",
            "x=1e-7",
            "m=999999999.5",
            "",
        ] {
            let c = capacity(spec).unwrap();
            let again = capacity(&c.to_string()).unwrap();
            assert_eq!(again, c, "{spec}");
            assert_eq!(again.to_string(), c.to_string(), "{spec}");
        }
    }

    #[test]
    fn an_empty_entry_is_refused() {
        for bad in [",", "cpu=4,", ",cpu=4", "cpu=4,,mem=1"] {
            assert_eq!(capacity(bad), Err(CapacityError::EmptyEntry), "{bad}");
        }
    }

    #[test]
    fn an_entry_without_an_equals_sign_is_refused() {
        assert_eq!(capacity("cpu"), Err(CapacityError::NotAPair("cpu".into())));
        assert_eq!(
            capacity("cpu=4,mem"),
            Err(CapacityError::NotAPair("mem".into()))
        );
    }

    #[test]
    fn a_badly_formed_name_is_refused() {
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "", "Cpu", "4cpu", "_cpu", "-cpu", "cp u", "cpu.x", "épée", &too_long,
        ] {
            assert_eq!(
                capacity(&format!("{bad}=1")),
                Err(CapacityError::BadName(bad.to_string())),
                "{bad:?}"
            );
        }
        assert!(capacity(&format!("{}=1", "a".repeat(MAX_NAME_LEN))).is_ok());
    }

    #[test]
    fn an_amount_that_is_not_a_finite_number_above_0_and_at_most_1e9_is_refused() {
        for bad in [
            "0",
            "-1",
            "-0",
            "",
            "x",
            "inf",
            "NaN",
            "1e10",
            "1000000000.5",
            " 4",
            "4 ",
        ] {
            assert_eq!(
                capacity(&format!("cpu={bad}")),
                Err(CapacityError::BadAmount {
                    name: "cpu".into(),
                    amount: bad.into()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_duplicate_resource_is_refused() {
        assert_eq!(
            capacity("cpu=4,mem=2,cpu=4"),
            Err(CapacityError::Duplicate("cpu".into()))
        );
    }

    #[test]
    fn more_than_16_resources_are_refused() {
        let spec = |n: usize| {
            (0..n)
                .map(|i| format!("r{i}=1"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            capacity(&spec(MAX_RESOURCES)).unwrap().0.len(),
            MAX_RESOURCES
        );
        assert_eq!(
            capacity(&spec(MAX_RESOURCES + 1)),
            Err(CapacityError::TooMany(MAX_RESOURCES + 1))
        );
    }

    #[test]
    fn a_change_replaces_only_the_fields_it_gives() {
        let declared = Declared::new(Declaration {
            weight: Weight::try_from(3).unwrap(),
            capacity: capacity("cpu=4").unwrap(),
        });
        let now = declared.apply(Change {
            weight: Some(Weight::try_from(9).unwrap()),
            capacity: None,
        });
        assert_eq!(now.weight.get(), 9);
        assert_eq!(now.capacity.to_string(), "cpu=4");
        let now = declared.apply(Change {
            weight: None,
            capacity: Some(Capacity::default()),
        });
        assert_eq!(now.weight.get(), 9);
        assert!(now.capacity.is_empty());
        assert_eq!(*declared.current(), *now);
    }
}
