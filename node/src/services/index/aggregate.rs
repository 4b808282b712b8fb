//! Aggregations of one field over the documents a query matches: statistics, cardinality,
//! percentiles and the most frequent values. Each walks the field's distinct values and counts
//! the matching documents holding each, never the documents one by one.

use roaring::RoaringBitmap;
use serde_json::{Value, json};

use super::inverted::FieldIndex;

/// Numbers summed over matching documents, a value counted once per document holding it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Statistics {
    pub count: u64,
    pub numeric: bool,
    pub sum: f64,
    pub sum_of_squares: f64,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
}

impl Statistics {
    pub fn to_json(&self) -> Value {
        if !self.numeric {
            return json!({ "count": self.count });
        }
        let n = self.count as f64;
        let average = if self.count == 0 { 0.0 } else { self.sum / n };
        let variance = if self.count == 0 {
            0.0
        } else {
            (self.sum_of_squares / n - average * average).max(0.0)
        };
        json!({
            "count": self.count,
            "average": average,
            "sum": self.sum,
            "minimum": self.minimum.unwrap_or(0.0),
            "maximum": self.maximum.unwrap_or(0.0),
            "sumOfSquares": self.sum_of_squares,
            "variance": variance,
            "stdDeviation": variance.sqrt(),
        })
    }
}

/// Statistics of a field: of its numbers when it holds numbers, else only the count of
/// matching documents that have it.
pub fn statistics(field: Option<&FieldIndex>, matches: &RoaringBitmap) -> Statistics {
    let Some(field) = field else {
        return Statistics::default();
    };
    if field.numbers.is_empty() {
        return Statistics {
            count: field.present.intersection_len(matches),
            ..Statistics::default()
        };
    }
    let mut stats = Statistics {
        numeric: true,
        ..Statistics::default()
    };
    for (value, posting) in &field.numbers {
        let count = posting.count_in(matches);
        if count == 0 {
            continue;
        }
        let v = value.get();
        stats.count += count;
        stats.sum += v * count as f64;
        stats.sum_of_squares += v * v * count as f64;
        stats.minimum = Some(stats.minimum.map_or(v, |m| m.min(v)));
        stats.maximum = Some(stats.maximum.map_or(v, |m| m.max(v)));
    }
    stats
}

/// How many distinct values the matching documents hold.
pub fn cardinality(field: Option<&FieldIndex>, matches: &RoaringBitmap) -> u64 {
    let Some(field) = field else {
        return 0;
    };
    let strings = field
        .strings
        .values()
        .filter(|p| p.count_in(matches) > 0)
        .count();
    let numbers = field
        .numbers
        .values()
        .filter(|p| p.count_in(matches) > 0)
        .count();
    let booleans = field
        .booleans
        .iter()
        .flatten()
        .filter(|p| p.count_in(matches) > 0)
        .count();
    (strings + numbers + booleans) as u64
}

/// The value at each percent of the matching documents' numbers (nearest rank).
pub fn percentiles(
    field: Option<&FieldIndex>,
    matches: &RoaringBitmap,
    percents: &[f64],
) -> Vec<(f64, f64)> {
    let Some(field) = field else {
        return Vec::new();
    };
    let counted: Vec<(f64, u64)> = field
        .numbers
        .iter()
        .filter_map(|(v, p)| {
            let c = p.count_in(matches);
            (c > 0).then_some((v.get(), c))
        })
        .collect();
    let total: u64 = counted.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return Vec::new();
    }
    percents
        .iter()
        .map(|percent| {
            let rank = ((percent / 100.0) * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            let value = counted
                .iter()
                .find(|(_, c)| {
                    seen += c;
                    seen >= rank
                })
                .or(counted.last())
                .map_or(0.0, |(v, _)| *v);
            (*percent, value)
        })
        .collect()
}

/// The `limit` values held by most matching documents, most first (ties by value).
pub fn buckets(
    field: Option<&FieldIndex>,
    matches: &RoaringBitmap,
    limit: usize,
) -> Vec<(String, u64)> {
    let Some(field) = field else {
        return Vec::new();
    };
    let mut counted: Vec<(String, u64)> = Vec::new();
    for (value, posting) in &field.strings {
        let c = posting.count_in(matches);
        if c > 0 {
            counted.push((value.to_string(), c));
        }
    }
    for (value, posting) in &field.numbers {
        let c = posting.count_in(matches);
        if c > 0 {
            counted.push((number_key(value.get()), c));
        }
    }
    for (b, posting) in field.booleans.iter().enumerate() {
        if let Some(posting) = posting {
            let c = posting.count_in(matches);
            if c > 0 {
                counted.push(((b == 1).to_string(), c));
            }
        }
    }
    counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counted.truncate(limit);
    counted
}

/// A number as a bucket's key: integers without a fraction.
fn number_key(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::inverted::{InvertedIndex, Section, Term};
    use super::super::query::parse;
    use super::*;

    fn index() -> InvertedIndex {
        let mut index = InvertedIndex::default();
        for (name, temp, model) in [
            ("a", 10.0, "X"),
            ("b", 20.0, "X"),
            ("c", 30.0, "Y"),
            ("d", 40.0, "X"),
        ] {
            index.set_section(
                name,
                Section::Registry,
                vec![
                    ("thingName".into(), Term::str(name)),
                    ("attributes.model".into(), Term::str(model)),
                    ("temp".into(), Term::Num(temp)),
                ],
            );
        }
        index
    }

    #[test]
    fn aggregations_count_only_matching_documents() {
        let index = index();
        let all = index.matches(&parse("*").unwrap());
        let xs = index.matches(&parse("attributes.model:X").unwrap());
        let stats = statistics(index.field("temp"), &xs);
        assert_eq!(
            (stats.count, stats.sum, stats.minimum, stats.maximum),
            (3, 70.0, Some(10.0), Some(40.0))
        );
        let json = stats.to_json();
        assert!((json["variance"].as_f64().unwrap() - 155.555_555).abs() < 1e-3);
        assert_eq!(
            statistics(index.field("attributes.model"), &all).to_json(),
            json!({"count": 4})
        );
        assert_eq!(cardinality(index.field("attributes.model"), &all), 2);
        assert_eq!(
            percentiles(index.field("temp"), &all, &[0.0, 50.0, 99.0]),
            vec![(0.0, 10.0), (50.0, 20.0), (99.0, 40.0)]
        );
        assert_eq!(
            buckets(index.field("attributes.model"), &all, 10),
            vec![("X".to_owned(), 3), ("Y".to_owned(), 1)]
        );
        assert_eq!(
            buckets(index.field("temp"), &xs, 1),
            vec![("10".to_owned(), 1)]
        );
    }
}
