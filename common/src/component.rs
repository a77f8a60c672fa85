//! Components of a transformer and their names: `h{l}.{h}` for a head, `m{l}` for an MLP.

use std::fmt;
use std::str::FromStr;

/// A component whose output can be ablated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Query head `head` of layer `layer` (its slice of the attention output projection's input).
    Head {
        /// Layer index, from 0.
        layer: usize,
        /// Query-head index within the layer, from 0.
        head: usize,
    },
    /// The MLP block of layer `layer`.
    Mlp {
        /// Layer index, from 0.
        layer: usize,
    },
}

/// A component name that does not parse, or names a component the model lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// The text is not of the form `h{l}.{h}` or `m{l}`.
    #[error(
        "`{0}` is not a component name (expected `h{{layer}}.{{head}}` such as `h9.1`, or `m{{layer}}` such as `m9`)"
    )]
    Syntax(String),
    /// The name is well formed but outside the model's shape.
    #[error(
        "component `{name}` does not exist in a model with {n_layers} layers and {n_heads} heads per layer"
    )]
    OutOfRange {
        /// The offending name.
        name: String,
        /// Layers in the model.
        n_layers: usize,
        /// Query heads per layer.
        n_heads: usize,
    },
}

impl Component {
    /// The layer this component belongs to.
    pub fn layer(&self) -> usize {
        match *self {
            Component::Head { layer, .. } | Component::Mlp { layer } => layer,
        }
    }

    /// Checks that the component exists in a model of the given shape.
    pub fn check(&self, n_layers: usize, n_heads: usize) -> Result<(), ComponentError> {
        let ok = match *self {
            Component::Head { layer, head } => layer < n_layers && head < n_heads,
            Component::Mlp { layer } => layer < n_layers,
        };
        if ok {
            Ok(())
        } else {
            Err(ComponentError::OutOfRange {
                name: self.to_string(),
                n_layers,
                n_heads,
            })
        }
    }

    /// Every component of a model, heads before the MLP within each layer.
    pub fn all(n_layers: usize, n_heads: usize) -> Vec<Component> {
        (0..n_layers)
            .flat_map(|layer| {
                (0..n_heads)
                    .map(move |head| Component::Head { layer, head })
                    .chain(std::iter::once(Component::Mlp { layer }))
            })
            .collect()
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Head { layer, head } => write!(f, "h{layer}.{head}"),
            Component::Mlp { layer } => write!(f, "m{layer}"),
        }
    }
}

impl FromStr for Component {
    type Err = ComponentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ComponentError::Syntax(s.to_string());
        let number = |t: &str| -> Result<usize, ComponentError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            t.parse().map_err(|_| syntax())
        };
        if let Some(rest) = s.strip_prefix('h') {
            let (l, h) = rest.split_once('.').ok_or_else(syntax)?;
            Ok(Component::Head {
                layer: number(l)?,
                head: number(h)?,
            })
        } else if let Some(rest) = s.strip_prefix('m') {
            Ok(Component::Mlp {
                layer: number(rest)?,
            })
        } else {
            Err(syntax())
        }
    }
}

/// Serialized by name (`"h9.1"`, `"m9"`).
impl serde::Serialize for Component {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Component {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["h0.0", "h9.1", "h29.8", "m0", "m11"] {
            let c: Component = name.parse().unwrap();
            assert_eq!(c.to_string(), name);
        }
        assert_eq!(
            "h9.1".parse::<Component>().unwrap(),
            Component::Head { layer: 9, head: 1 }
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "", "h", "h9", "h9.", "h.1", "x1", "m", "m-1", "h1.2.3", "m 1", "H9.1",
        ] {
            assert!(
                matches!(bad.parse::<Component>(), Err(ComponentError::Syntax(_))),
                "{bad}"
            );
        }
        let err = "h40.2"
            .parse::<Component>()
            .unwrap()
            .check(30, 9)
            .unwrap_err();
        assert!(err.to_string().contains("h40.2"), "{err}");
        assert!("m29".parse::<Component>().unwrap().check(30, 9).is_ok());
    }

    #[test]
    fn all_lists_heads_then_mlp_per_layer() {
        let all = Component::all(2, 2);
        let names: Vec<String> = all.iter().map(|c| c.to_string()).collect();
        assert_eq!(names, ["h0.0", "h0.1", "m0", "h1.0", "h1.1", "m1"]);
    }
}
