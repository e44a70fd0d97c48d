//! Serialized queries (compat spec §4): sources, filter expressions, index range planning.

use std::cmp::Ordering;
use std::ops::Bound;

use serde_json::Value as Json;

use crate::error::TypesError;
use crate::index_key::{encode_optional, prefix_successor, KeyRange};
use crate::json::decode_optional;
use crate::value::{cmp_optional, Object, Value};

/// Most operators in one query.
pub const MAX_OPERATORS: usize = 256;
/// Filter expressions nest at most this deep.
pub const MAX_EXPR_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// One `q.eq/gt/...` of `withIndex`; `value: None` is `undefined` (field absent).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeExpr {
    pub op: RangeOp,
    pub field_path: String,
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum QuerySource {
    FullTableScan {
        table: String,
        order: Order,
    },
    IndexRange {
        table: String,
        index: String,
        range: Vec<RangeExpr>,
        order: Order,
    },
    Search {
        table: String,
        index: String,
        filters: Json,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum QueryOperator {
    Filter(Expr),
    Limit(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerializedQuery {
    pub source: QuerySource,
    pub operators: Vec<QueryOperator>,
}

fn bad(message: impl Into<String>) -> TypesError {
    TypesError::InvalidQuery(message.into())
}

fn parse_order(json: Option<&Json>) -> Result<Order, TypesError> {
    match json {
        None | Some(Json::Null) => Ok(Order::Asc),
        Some(Json::String(s)) if s == "asc" => Ok(Order::Asc),
        Some(Json::String(s)) if s == "desc" => Ok(Order::Desc),
        Some(other) => Err(bad(format!("invalid order {other}"))),
    }
}

fn split_index_name(name: &str) -> Result<(String, String), TypesError> {
    match name.split_once('.') {
        Some((table, index)) if !table.is_empty() && !index.is_empty() => {
            Ok((table.to_string(), index.to_string()))
        }
        _ => Err(bad(format!(
            "invalid index name {name:?}: expected \"table.index\""
        ))),
    }
}

impl SerializedQuery {
    pub fn parse(json: &Json) -> Result<SerializedQuery, TypesError> {
        let source = json
            .get("source")
            .ok_or_else(|| bad("query without source"))?;
        let kind = source
            .get("type")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let source = match kind {
            "FullTableScan" => QuerySource::FullTableScan {
                table: source
                    .get("tableName")
                    .and_then(Json::as_str)
                    .ok_or_else(|| bad("FullTableScan without tableName"))?
                    .to_string(),
                order: parse_order(source.get("order"))?,
            },
            "IndexRange" => {
                let name = source
                    .get("indexName")
                    .and_then(Json::as_str)
                    .ok_or_else(|| bad("IndexRange without indexName"))?;
                let (table, index) = split_index_name(name)?;
                let Some(Json::Array(range)) = source.get("range") else {
                    return Err(bad("IndexRange without range"));
                };
                let range = range
                    .iter()
                    .map(parse_range_expr)
                    .collect::<Result<_, _>>()?;
                QuerySource::IndexRange {
                    table,
                    index,
                    range,
                    order: parse_order(source.get("order"))?,
                }
            }
            "Search" => {
                let name = source
                    .get("indexName")
                    .and_then(Json::as_str)
                    .ok_or_else(|| bad("Search without indexName"))?;
                let (table, index) = split_index_name(name)?;
                QuerySource::Search {
                    table,
                    index,
                    filters: source.get("filters").cloned().unwrap_or(Json::Null),
                }
            }
            other => return Err(bad(format!("unknown query source type {other:?}"))),
        };
        let operators = match json.get("operators") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(ops)) => {
                if ops.len() > MAX_OPERATORS {
                    return Err(bad(format!(
                        "a query has at most {MAX_OPERATORS} operators"
                    )));
                }
                ops.iter().map(parse_operator).collect::<Result<_, _>>()?
            }
            Some(other) => return Err(bad(format!("invalid operators {other}"))),
        };
        Ok(SerializedQuery { source, operators })
    }
}

fn parse_range_expr(json: &Json) -> Result<RangeExpr, TypesError> {
    let op = match json.get("type").and_then(Json::as_str) {
        Some("Eq") => RangeOp::Eq,
        Some("Gt") => RangeOp::Gt,
        Some("Gte") => RangeOp::Gte,
        Some("Lt") => RangeOp::Lt,
        Some("Lte") => RangeOp::Lte,
        other => return Err(bad(format!("invalid range expression type {other:?}"))),
    };
    let field_path = json
        .get("fieldPath")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("range expression without fieldPath"))?
        .to_string();
    let value = decode_optional(json.get("value").unwrap_or(&Json::Null))?;
    Ok(RangeExpr {
        op,
        field_path,
        value,
    })
}

fn parse_operator(json: &Json) -> Result<QueryOperator, TypesError> {
    if let Some(filter) = json.get("filter") {
        return Ok(QueryOperator::Filter(Expr::parse(filter)?));
    }
    if let Some(limit) = json.get("limit") {
        let n = limit
            .as_f64()
            .ok_or_else(|| bad("limit must be a number"))?;
        if !(n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64) {
            return Err(bad(format!(
                "limit must be a non-negative integer, got {n}"
            )));
        }
        return Ok(QueryOperator::Limit(n as usize));
    }
    Err(bad(format!("unknown query operator {json}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Field(String),
    Literal(Option<Value>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    pub fn parse(json: &Json) -> Result<Expr, TypesError> {
        parse_expr(json, 0)
    }

    /// Evaluates against a document; `None` is undefined.
    pub fn evaluate(&self, doc: &Object) -> Result<Option<Value>, TypesError> {
        Ok(match self {
            Expr::Field(path) => field(doc, path).cloned(),
            Expr::Literal(value) => value.clone(),
            Expr::Binary(op, l, r) => {
                let (l, r) = (l.evaluate(doc)?, r.evaluate(doc)?);
                let cmp = || cmp_optional(l.as_ref(), r.as_ref());
                match op {
                    BinaryOp::Eq => Some(Value::Boolean(cmp() == Ordering::Equal)),
                    BinaryOp::Neq => Some(Value::Boolean(cmp() != Ordering::Equal)),
                    BinaryOp::Lt => Some(Value::Boolean(cmp() == Ordering::Less)),
                    BinaryOp::Lte => Some(Value::Boolean(cmp() != Ordering::Greater)),
                    BinaryOp::Gt => Some(Value::Boolean(cmp() == Ordering::Greater)),
                    BinaryOp::Gte => Some(Value::Boolean(cmp() != Ordering::Less)),
                    arith => Some(arithmetic(*arith, l, r)?),
                }
            }
            Expr::Neg(x) => match x.evaluate(doc)? {
                Some(Value::Int64(i)) => {
                    Some(Value::Int64(i.checked_neg().ok_or_else(|| {
                        bad("EvalError: int64 overflow in negation")
                    })?))
                }
                Some(Value::Float64(f)) => Some(Value::Float64(-f)),
                other => {
                    return Err(bad(format!(
                        "EvalError: cannot negate {}",
                        describe(&other)
                    )))
                }
            },
            Expr::And(items) => {
                for item in items {
                    if !as_bool(item.evaluate(doc)?)? {
                        return Ok(Some(Value::Boolean(false)));
                    }
                }
                Some(Value::Boolean(true))
            }
            Expr::Or(items) => {
                for item in items {
                    if as_bool(item.evaluate(doc)?)? {
                        return Ok(Some(Value::Boolean(true)));
                    }
                }
                Some(Value::Boolean(false))
            }
            Expr::Not(x) => Some(Value::Boolean(!as_bool(x.evaluate(doc)?)?)),
        })
    }

    /// Whether a filter keeps the document; a non-boolean result is an error.
    pub fn matches(&self, doc: &Object) -> Result<bool, TypesError> {
        as_bool(self.evaluate(doc)?)
    }
}

fn field<'a>(doc: &'a Object, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut current = doc.get(first)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn describe(value: &Option<Value>) -> String {
    match value {
        None => "undefined".into(),
        Some(v) => crate::json::encode_text(v),
    }
}

fn as_bool(value: Option<Value>) -> Result<bool, TypesError> {
    match value {
        Some(Value::Boolean(b)) => Ok(b),
        other => Err(bad(format!(
            "Cannot use value {} as a Boolean",
            describe(&other)
        ))),
    }
}

fn arithmetic(op: BinaryOp, l: Option<Value>, r: Option<Value>) -> Result<Value, TypesError> {
    match (l, r) {
        (Some(Value::Int64(a)), Some(Value::Int64(b))) => {
            let result = match op {
                BinaryOp::Add => a.checked_add(b),
                BinaryOp::Sub => a.checked_sub(b),
                BinaryOp::Mul => a.checked_mul(b),
                BinaryOp::Div => a.checked_div(b),
                BinaryOp::Mod => a.checked_rem(b),
                _ => None,
            };
            result
                .map(Value::Int64)
                .ok_or_else(|| bad("EvalError: int64 overflow or division by zero"))
        }
        (Some(Value::Float64(a)), Some(Value::Float64(b))) => Ok(Value::Float64(match op {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Mod => a % b,
            _ => f64::NAN,
        })),
        (l, r) => Err(bad(format!(
            "EvalError: arithmetic needs two int64s or two float64s, got {} and {}",
            describe(&l),
            describe(&r)
        ))),
    }
}

fn parse_expr(json: &Json, depth: usize) -> Result<Expr, TypesError> {
    if depth > MAX_EXPR_DEPTH {
        return Err(bad(format!(
            "filter expression nested more than {MAX_EXPR_DEPTH} levels"
        )));
    }
    let Json::Object(map) = json else {
        return Err(bad(format!("invalid filter expression {json}")));
    };
    let Some((key, inner)) = map.iter().next().filter(|_| map.len() == 1) else {
        return Err(bad(format!("invalid filter expression {json}")));
    };
    let binary = |op| -> Result<Expr, TypesError> {
        match inner {
            Json::Array(items) if items.len() == 2 => Ok(Expr::Binary(
                op,
                Box::new(parse_expr(&items[0], depth + 1)?),
                Box::new(parse_expr(&items[1], depth + 1)?),
            )),
            _ => Err(bad(format!("{key} takes two operands"))),
        }
    };
    let list = || -> Result<Vec<Expr>, TypesError> {
        match inner {
            Json::Array(items) => items.iter().map(|i| parse_expr(i, depth + 1)).collect(),
            _ => Err(bad(format!("{key} takes a list"))),
        }
    };
    Ok(match key.as_str() {
        "$field" => Expr::Field(
            inner
                .as_str()
                .ok_or_else(|| bad("$field takes a string"))?
                .to_string(),
        ),
        "$literal" => Expr::Literal(decode_optional(inner)?),
        "$eq" => binary(BinaryOp::Eq)?,
        "$neq" => binary(BinaryOp::Neq)?,
        "$lt" => binary(BinaryOp::Lt)?,
        "$lte" => binary(BinaryOp::Lte)?,
        "$gt" => binary(BinaryOp::Gt)?,
        "$gte" => binary(BinaryOp::Gte)?,
        "$add" => binary(BinaryOp::Add)?,
        "$sub" => binary(BinaryOp::Sub)?,
        "$mul" => binary(BinaryOp::Mul)?,
        "$div" => binary(BinaryOp::Div)?,
        "$mod" => binary(BinaryOp::Mod)?,
        "$neg" => Expr::Neg(Box::new(parse_expr(inner, depth + 1)?)),
        "$not" => Expr::Not(Box::new(parse_expr(inner, depth + 1)?)),
        "$and" => Expr::And(list()?),
        "$or" => Expr::Or(list()?),
        other => return Err(bad(format!("unknown filter operator {other:?}"))),
    })
}

/// Turns `withIndex` range expressions into a byte range over the index's keys.
/// `index_fields` is the full key: declared fields, then `_creationTime` and `_id`.
pub fn plan_index_range(
    index_fields: &[String],
    range: &[RangeExpr],
) -> Result<KeyRange, TypesError> {
    let mut prefix = Vec::new();
    let mut position = 0;
    let mut exprs = range.iter().peekable();
    while let Some(expr) = exprs.peek() {
        if expr.op != RangeOp::Eq {
            break;
        }
        let expected = index_fields.get(position).ok_or_else(|| {
            bad(format!(
                "the index has only {} fields; cannot add eq({:?})",
                index_fields.len(),
                expr.field_path
            ))
        })?;
        if &expr.field_path != expected {
            return Err(bad(format!(
                "Uh oh! Index range expressions must name index fields in order: expected \
                 {expected:?}, got {:?}",
                expr.field_path
            )));
        }
        encode_optional(expr.value.as_ref(), &mut prefix);
        position += 1;
        exprs.next();
    }
    let mut lower: Option<&RangeExpr> = None;
    let mut upper: Option<&RangeExpr> = None;
    for expr in exprs {
        let expected = index_fields.get(position).ok_or_else(|| {
            bad(format!(
                "the index has only {} fields; cannot bound {:?}",
                index_fields.len(),
                expr.field_path
            ))
        })?;
        if &expr.field_path != expected {
            return Err(bad(format!(
                "a range bound must be on the field after the equalities ({expected:?}), got {:?}",
                expr.field_path
            )));
        }
        let slot = match expr.op {
            RangeOp::Gt | RangeOp::Gte => &mut lower,
            RangeOp::Lt | RangeOp::Lte => &mut upper,
            RangeOp::Eq => {
                return Err(bad(format!(
                    "eq({:?}) cannot follow a range bound",
                    expr.field_path
                )))
            }
        };
        if slot.is_some() {
            return Err(bad(format!(
                "two bounds of the same side on {:?}",
                expr.field_path
            )));
        }
        *slot = Some(expr);
    }
    let with = |expr: &RangeExpr| {
        let mut key = prefix.clone();
        encode_optional(expr.value.as_ref(), &mut key);
        key
    };
    let start = match lower {
        None if prefix.is_empty() => Bound::Unbounded,
        None => Bound::Included(prefix.clone()),
        Some(e) if e.op == RangeOp::Gte => Bound::Included(with(e)),
        Some(e) => match prefix_successor(&with(e)) {
            Some(s) => Bound::Included(s),
            None => Bound::Excluded(with(e)),
        },
    };
    let end = match upper {
        None => match prefix_successor(&prefix) {
            Some(s) if !prefix.is_empty() => Bound::Excluded(s),
            _ => Bound::Unbounded,
        },
        Some(e) if e.op == RangeOp::Lt => Bound::Excluded(with(e)),
        Some(e) => match prefix_successor(&with(e)) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        },
    };
    Ok(KeyRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index_key::document_key;
    use serde_json::json;

    #[test]
    fn parses_observed_queries_and_filters() {
        let q = SerializedQuery::parse(&json!({"source":{"type":"IndexRange","indexName":"messages.by_author","range":[{"type":"Eq","fieldPath":"author","value":"a"}],"order":"desc"},"operators":[{"limit":10}]}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.operators, vec![QueryOperator::Limit(10)]);
        let f = Expr::parse(&json!({"$and":[{"$or":[{"$neq":[{"$field":"a.b"},{"$literal":{"$undefined":null}}]},{"$gt":[{"$field":"n"},{"$literal":{"$integer":"AwAAAAAAAAA="}}]}]},{"$not":{"$lte":[{"$add":[{"$field":"x"},{"$literal":1}]},{"$mul":[{"$literal":2},{"$neg":{"$field":"y"}}]}]}}]}))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut doc = Object::new();
        doc.insert("n".into(), Value::Int64(5));
        doc.insert("x".into(), Value::Float64(1.0));
        doc.insert("y".into(), Value::Float64(-3.0));
        // (undefined != undefined → false) or (5n > 3n → true); not(2 <= 6 → true) → false
        assert_eq!(f.matches(&doc), Ok(false));
        let non_bool = Expr::parse(&json!({"$field":"n"})).unwrap_or_else(|e| panic!("{e}"));
        assert!(non_bool.matches(&doc).is_err());
        let mixed = Expr::parse(&json!({"$add":[{"$field":"n"},{"$literal":1}]}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(mixed.evaluate(&doc).is_err(), "int64 + float64 is an error");
    }

    #[test]
    fn range_plans_match_direct_evaluation() {
        let fields: Vec<String> = ["a", "b", "_creationTime", "_id"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let values = [
            None,
            Some(Value::Null),
            Some(Value::Int64(1)),
            Some(Value::Float64(1.0)),
            Some(Value::Float64(2.0)),
            Some(Value::String("x".into())),
        ];
        let ops = [RangeOp::Gt, RangeOp::Gte, RangeOp::Lt, RangeOp::Lte];
        let mut docs = Vec::new();
        for a in &values {
            for b in &values {
                let mut doc = Object::new();
                if let Some(a) = a {
                    doc.insert("a".into(), a.clone());
                }
                if let Some(b) = b {
                    doc.insert("b".into(), b.clone());
                }
                doc.insert("_creationTime".into(), Value::Float64(docs.len() as f64));
                doc.insert("_id".into(), Value::String(format!("id{}", docs.len())));
                docs.push(doc);
            }
        }
        let eval = |doc: &Object, e: &RangeExpr| {
            let c = cmp_optional(doc.get(&e.field_path), e.value.as_ref());
            match e.op {
                RangeOp::Eq => c == Ordering::Equal,
                RangeOp::Gt => c == Ordering::Greater,
                RangeOp::Gte => c != Ordering::Less,
                RangeOp::Lt => c == Ordering::Less,
                RangeOp::Lte => c != Ordering::Greater,
            }
        };
        let mut checked = 0;
        for eq in &values {
            for lo in ops.iter().take(2) {
                for hi in ops.iter().skip(2) {
                    for lv in &values {
                        for hv in &values {
                            let range = vec![
                                RangeExpr {
                                    op: RangeOp::Eq,
                                    field_path: "a".into(),
                                    value: eq.clone(),
                                },
                                RangeExpr {
                                    op: *lo,
                                    field_path: "b".into(),
                                    value: lv.clone(),
                                },
                                RangeExpr {
                                    op: *hi,
                                    field_path: "b".into(),
                                    value: hv.clone(),
                                },
                            ];
                            let keys =
                                plan_index_range(&fields, &range).unwrap_or_else(|e| panic!("{e}"));
                            for doc in &docs {
                                let direct = range.iter().all(|e| eval(doc, e));
                                assert_eq!(
                                    keys.contains(&document_key(&fields, doc)),
                                    direct,
                                    "{range:?} {doc:?}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000);
        let bad_order = [RangeExpr {
            op: RangeOp::Eq,
            field_path: "b".into(),
            value: None,
        }];
        assert!(plan_index_range(&fields, &bad_order).is_err());
    }
}
