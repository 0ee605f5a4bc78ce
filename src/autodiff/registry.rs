//! The registry of gradient rules: every op type is in exactly one class.
//!
//! - [`Class::Rule`]: a function that emits the backward nodes of one forward node;
//! - [`Class::NoGradient`]: the op's outputs are not differentiable (Shape, ArgMax,
//!   comparisons, Constant...); it contributes zero and is not an error on the path;
//! - [`Class::Refused`]: differentiating through it is an error (with the reason).
//!
//! An op type in no class is an error too, never a silent zero. Each family file under
//! `ops/` registers its ops in its `register` function; adding an op means writing one rule
//! there and one line in that function.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::builder::Builder;
use crate::proto::onnx::NodeProto;

/// A gradient rule. Given the forward node and the gradients that reached its outputs (`None`
/// where none did), it emits backward nodes and returns one gradient per input (`None` where
/// the input needs none or has none; the vector may be shorter than the inputs). Only inputs
/// for which [`Builder::wants`] is true need a gradient.
pub type Rule =
    fn(&mut Builder, &NodeProto, &[Option<String>]) -> Result<Vec<Option<String>>, String>;

#[derive(Clone, Copy)]
pub enum Class {
    Rule(Rule),
    NoGradient,
    Refused(&'static str),
}

pub struct Registry {
    classes: HashMap<&'static str, Class>,
}

impl Registry {
    /// The rules integrad ships (built once per process).
    pub fn standard() -> &'static Registry {
        static STANDARD: OnceLock<Registry> = OnceLock::new();
        STANDARD.get_or_init(|| {
            let mut r = Registry {
                classes: HashMap::new(),
            };
            super::ops::register(&mut r);
            r
        })
    }

    fn insert(&mut self, op_type: &'static str, class: Class) {
        let old = self.classes.insert(op_type, class);
        assert!(old.is_none(), "op type {op_type} registered twice");
    }

    pub fn rule(&mut self, op_type: &'static str, rule: Rule) {
        self.insert(op_type, Class::Rule(rule));
    }

    pub fn no_gradient(&mut self, op_types: &[&'static str]) {
        for op in op_types {
            self.insert(op, Class::NoGradient);
        }
    }

    pub fn refuse(&mut self, op_type: &'static str, reason: &'static str) {
        self.insert(op_type, Class::Refused(reason));
    }

    /// The class of `node` (ops outside the default ONNX domain are in none).
    pub fn class_of(&self, node: &NodeProto) -> Option<Class> {
        let domain = node.domain();
        if !(domain.is_empty() || domain == "ai.onnx") {
            return None;
        }
        self.classes.get(node.op_type()).copied()
    }

    /// The class of op type `op_type` in the default domain.
    pub fn class(&self, op_type: &str) -> Option<Class> {
        self.classes.get(op_type).copied()
    }

    /// Every registered op type with its class name (`rule`, `no-gradient`, `refused`).
    pub fn op_types(&self) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = self
            .classes
            .iter()
            .map(|(k, c)| {
                (
                    *k,
                    match c {
                        Class::Rule(_) => "rule",
                        Class::NoGradient => "no-gradient",
                        Class::Refused(_) => "refused",
                    },
                )
            })
            .collect();
        v.sort();
        v
    }
}
