//! [`SqlValue`], the values a row mapping produces: few, owned, hashable (upsert
//! mode keeps the latest row per key) and converted to the column's type when
//! written (an `Int` goes into `smallint`, `integer` or `bigint` columns, range
//! checked).

use std::error::Error;
use std::hash::{Hash, Hasher};

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// One column value of a row.
///
/// Written as: `Null` into any column; `Bool` into `boolean`; `Int` and `UInt`
/// into `smallint`, `integer`, `bigint` (range checked) or `double precision`;
/// `Float` into `double precision` or `real`; `Text` into `text`, `varchar`,
/// `char`, `name`, `json` or `jsonb`; `Bytes` into `bytea`. Any other pairing is
/// an error naming the value and the column type.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl PartialEq for SqlValue {
    fn eq(&self, other: &Self) -> bool {
        use SqlValue::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            // By bits: a key compares equal to itself, NaN included.
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Text(a), Text(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for SqlValue {}

impl Hash for SqlValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            SqlValue::Null => {}
            SqlValue::Bool(v) => v.hash(state),
            SqlValue::Int(v) => v.hash(state),
            SqlValue::UInt(v) => v.hash(state),
            SqlValue::Float(v) => v.to_bits().hash(state),
            SqlValue::Text(v) => v.hash(state),
            SqlValue::Bytes(v) => v.hash(state),
        }
    }
}

macro_rules! from_int {
    ($($t:ty => $variant:ident as $as:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self {
                SqlValue::$variant(v as $as)
            }
        }
    )*};
}

from_int!(i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
    u8 => Int as i64, u16 => Int as i64, u32 => Int as i64, u64 => UInt as u64,
    f32 => Float as f64, f64 => Float as f64);

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        SqlValue::Bool(v)
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_owned())
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Bytes(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

fn mismatch(value: &SqlValue, ty: &Type) -> BoxError {
    format!("cannot write {value:?} into a column of type {ty}").into()
}

fn write_int(value: &SqlValue, v: i128, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let range =
        || -> BoxError { format!("{value:?} is out of range for a column of type {ty}").into() };
    match *ty {
        Type::INT2 => i16::try_from(v).map_err(|_| range())?.to_sql(ty, out),
        Type::INT4 => i32::try_from(v).map_err(|_| range())?.to_sql(ty, out),
        Type::INT8 => i64::try_from(v).map_err(|_| range())?.to_sql(ty, out),
        Type::FLOAT8 => (v as f64).to_sql(ty, out),
        _ => Err(mismatch(value, ty)),
    }
}

impl ToSql for SqlValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(v) if *ty == Type::BOOL => v.to_sql(ty, out),
            SqlValue::Int(v) => write_int(self, i128::from(*v), ty, out),
            SqlValue::UInt(v) => write_int(self, i128::from(*v), ty, out),
            SqlValue::Float(v) if *ty == Type::FLOAT8 => v.to_sql(ty, out),
            SqlValue::Float(v) if *ty == Type::FLOAT4 => (*v as f32).to_sql(ty, out),
            SqlValue::Text(v) if *ty == Type::JSONB => {
                // jsonb's binary format: a version byte, then the text.
                out.extend_from_slice(&[1]);
                out.extend_from_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            SqlValue::Text(v) if *ty == Type::JSON => {
                out.extend_from_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            SqlValue::Text(v) if <String as ToSql>::accepts(ty) => v.to_sql(ty, out),
            SqlValue::Bytes(v) if *ty == Type::BYTEA => v.as_slice().to_sql(ty, out),
            _ => Err(mismatch(self, ty)),
        }
    }

    /// Every type: the value checks the column's type when it is written.
    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_are_range_checked_for_the_column_type() {
        let mut out = BytesMut::new();
        assert!(SqlValue::Int(7).to_sql(&Type::INT2, &mut out).is_ok());
        let err = |v: SqlValue, ty: &Type| match v.to_sql(ty, &mut BytesMut::new()) {
            Ok(_) => panic!("{v:?} written into {ty}"),
            Err(e) => e,
        };
        let err1 = err(SqlValue::Int(70_000), &Type::INT2);
        assert!(err1.to_string().contains("out of range"), "{err1}");
        let err2 = err(SqlValue::UInt(u64::MAX), &Type::INT8);
        assert!(err2.to_string().contains("out of range"), "{err2}");
        let err3 = err(SqlValue::Text("x".into()), &Type::INT8);
        assert!(err3.to_string().contains("cannot write"), "{err3}");
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(SqlValue::Float(f64::NAN), SqlValue::Float(f64::NAN));
        assert_ne!(SqlValue::Int(1), SqlValue::UInt(1));
    }
}
