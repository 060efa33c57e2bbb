//! Named amounts of resources, `cpu=4,storage=2`: what a replica declares it has
//! (`X-Capacity` on its heartbeat) and what a request says it needs (`X-Demand`).

use std::fmt;
use std::str::FromStr;

/// The most resources one declaration may name.
pub const MAX_RESOURCES: usize = 16;

/// Resources by name, sorted, each named once, each amount finite and positive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources(Vec<(String, f64)>);

/// Why a resource list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourcesError {
    #[error("'{0}' is not name=amount")]
    NotAPair(String),
    #[error("'{0}' is not a resource name ([a-z][a-z0-9_-]*, at most 32 characters)")]
    BadName(String),
    #[error("the amount of '{0}' must be a number above 0 and at most 1e9")]
    BadAmount(String),
    #[error("'{0}' is named twice")]
    Duplicate(String),
    #[error("at most {MAX_RESOURCES} resources")]
    TooMany,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl FromStr for Resources {
    type Err = ResourcesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut items: Vec<(String, f64)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, amount) = part
                .split_once('=')
                .ok_or_else(|| ResourcesError::NotAPair(part.into()))?;
            let name = name.trim();
            if !valid_name(name) {
                return Err(ResourcesError::BadName(name.into()));
            }
            let amount: f64 = amount
                .trim()
                .parse()
                .ok()
                .filter(|a: &f64| a.is_finite() && *a > 0.0 && *a <= 1e9)
                .ok_or_else(|| ResourcesError::BadAmount(name.into()))?;
            if items.iter().any(|(n, _)| n == name) {
                return Err(ResourcesError::Duplicate(name.into()));
            }
            items.push((name.into(), amount));
        }
        if items.len() > MAX_RESOURCES {
            return Err(ResourcesError::TooMany);
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Resources(items))
    }
}

impl fmt::Display for Resources {
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

impl Resources {
    /// Whether nothing is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The amount of `name`, if named.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Every resource and its amount, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, a)| (n.as_str(), *a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_parses_sorted_and_prints_back_canonically() {
        let r: Resources = " storage=2 , cpu=4".parse().unwrap();
        assert_eq!(r.to_string(), "cpu=4,storage=2");
        assert_eq!(r.get("cpu"), Some(4.0));
        assert_eq!(r.get("gpu"), None);
        assert_eq!(r.to_string().parse::<Resources>().unwrap(), r);
        assert!("".parse::<Resources>().unwrap().is_empty());
    }

    #[test]
    fn every_malformed_list_is_refused_with_its_reason() {
        let err = |s: &str| s.parse::<Resources>().unwrap_err();
        assert_eq!(err("cpu"), ResourcesError::NotAPair("cpu".into()));
        assert_eq!(err("CPU=1"), ResourcesError::BadName("CPU".into()));
        assert_eq!(err("cpu=0"), ResourcesError::BadAmount("cpu".into()));
        assert_eq!(err("cpu=-1"), ResourcesError::BadAmount("cpu".into()));
        assert_eq!(err("cpu=NaN"), ResourcesError::BadAmount("cpu".into()));
        assert_eq!(err("cpu=inf"), ResourcesError::BadAmount("cpu".into()));
        assert_eq!(err("cpu=1,cpu=2"), ResourcesError::Duplicate("cpu".into()));
        let many: Vec<String> = (0..17).map(|i| format!("r{i}=1")).collect();
        assert_eq!(err(&many.join(",")), ResourcesError::TooMany);
    }
}
