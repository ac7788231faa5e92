//! Kubernetes quantities as numbers, both ways: [`value`] reads memory limits (`128Mi`) and the
//! HPA's metric values (`1500m`); [`ratio_quantity`] writes the HPA's target ratio.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The value of a quantity: a decimal number with an optional milli (`m`), binary (`Ki`…`Ei`),
/// decimal (`k`…`E`) or exponent (`e6`) suffix. `None` for anything else or a negative value.
pub fn value(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => 10f64.powi(exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    let value = number * multiplier;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// The ratio as a canonical Kubernetes quantity in milli-units (`1`, `500m`, `1250m`), the form
/// the API server stores, so the applied value reads back unchanged.
///
/// Validation admits any ratio in [0.001, readiness factor); one that would round up to the
/// factor is kept 0.001 below it, so the target stays below the readiness limit.
pub fn ratio_quantity(ratio: f64, readiness_factor: i64) -> Quantity {
    let milli = ((ratio * 1000.0).round() as i64).clamp(1, readiness_factor * 1000 - 1);
    if milli % 1000 == 0 {
        Quantity((milli / 1000).to_string())
    } else {
        Quantity(format!("{milli}m"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notation() {
        for (text, expected) in [
            ("134217728", Some(134_217_728.0)),
            ("128Mi", Some(134_217_728.0)),
            ("0.5Gi", Some(536_870_912.0)),
            ("1e9", Some(1e9)),
            ("1E3", Some(1000.0)),
            ("2k", Some(2000.0)),
            ("1500m", Some(1.5)),
            ("4", Some(4.0)),
            ("12x", None),
            ("Mi", None),
        ] {
            assert_eq!(value(text), expected, "{text}");
        }
    }

    #[test]
    fn ratio_quantities_are_canonical_milli_units() {
        for (ratio, text) in [
            (1.0, "1"),
            (0.5, "500m"),
            (1.25, "1250m"),
            (0.001, "1m"),
            (1.9999, "1999m"),
            (0.1 + 0.2, "300m"),
        ] {
            assert_eq!(ratio_quantity(ratio, 2).0, text, "{ratio}");
        }
    }
}
