//! The catalog of a tenant: its tables and indexes, and their numbers.
//!
//! Tables are created implicitly by the first insert; indexes come from the pushed schema
//! plus two built-ins per table (`by_id`, `by_creation_time`). Numbers are never reused
//! within a namespace, so a stale index number can never read another index's entries.
//! The catalog is stored as the global [`CATALOG_GLOBAL`] and changes only through the
//! committer; every change bumps `version`, and a transaction that began under an older
//! version conflicts (so nothing commits against a schema it did not see).
//!
//! An index being built (a push adding it is in progress) is *building*: every write
//! maintains it, but no query finds it by name until the push switches it in. A dropped
//! index is *garbage* until its entries are deleted, in the background; a building index
//! found when a tenant opens (its build was interrupted) becomes garbage too.

use std::collections::BTreeMap;

use nimbus_storage::IndexNumber;
use nimbus_types::TableNumber;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Name of the global holding the catalog.
pub const CATALOG_GLOBAL: &str = "catalog";
/// Format version of the stored catalog.
const CATALOG_FORMAT: u32 = 1;

/// Fields of the built-in `by_id` index.
pub const BY_ID: &str = "by_id";
/// Fields of the built-in `by_creation_time` index.
pub const BY_CREATION_TIME: &str = "by_creation_time";

/// One index: its number, table, name and full key fields (declared fields followed by
/// the `_creationTime` and `_id` tiebreakers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    pub number: IndexNumber,
    pub table: TableNumber,
    pub name: String,
    pub fields: Vec<String>,
    /// Being built: maintained by writes, not visible to queries yet.
    pub building: bool,
}

/// One table: its number, name and index numbers by name (including the built-ins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub number: TableNumber,
    pub name: String,
    pub indexes: BTreeMap<String, IndexNumber>,
}

/// The whole catalog of a tenant at one version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    pub version: u64,
    tables: BTreeMap<String, TableInfo>,
    table_names: BTreeMap<TableNumber, String>,
    indexes: BTreeMap<IndexNumber, IndexInfo>,
    /// Dropped indexes whose entries may still be in storage.
    garbage: std::collections::BTreeSet<IndexNumber>,
    next_table: u32,
    next_index: u32,
}

/// Full key fields of a user index with the given declared fields.
pub fn user_index_fields(declared: &[String]) -> Vec<String> {
    let mut fields = declared.to_vec();
    for tiebreak in ["_creationTime", "_id"] {
        if !fields.iter().any(|f| f == tiebreak) {
            fields.push(tiebreak.to_string());
        }
    }
    fields
}

fn builtin_fields(name: &str) -> Vec<String> {
    if name == BY_ID {
        vec!["_id".to_string()]
    } else {
        vec!["_creationTime".to_string(), "_id".to_string()]
    }
}

impl Catalog {
    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name)
    }

    pub fn table_name(&self, number: TableNumber) -> Option<&str> {
        self.table_names.get(&number).map(String::as_str)
    }

    pub fn index(&self, number: IndexNumber) -> Option<&IndexInfo> {
        self.indexes.get(&number)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.tables.values()
    }

    /// Indexes of a table that writes maintain (built-ins and building ones included).
    pub fn table_indexes(&self, table: TableNumber) -> impl Iterator<Item = &IndexInfo> {
        self.indexes
            .values()
            .filter(move |index| index.table == table)
    }

    /// Resolves `"table.index"` as queries name indexes.
    pub fn resolve_index(&self, table: &str, index: &str) -> Result<&IndexInfo, EngineError> {
        let info = self.tables.get(table);
        let number = info.and_then(|t| t.indexes.get(index));
        match number.and_then(|n| self.indexes.get(n)) {
            Some(found) => Ok(found),
            None => Err(EngineError::User(format!(
                "Index {table}.{index} not found. Declare it in the schema with \
                 .index(\"{index}\", [...]) and push again."
            ))),
        }
    }

    /// The table number a new table called `name` would get, without creating it.
    pub fn next_table_number(&self) -> TableNumber {
        TableNumber(self.next_table.max(1))
    }

    /// Creates a table with its built-in indexes; returns its number.
    pub fn create_table(&mut self, name: &str) -> TableNumber {
        if let Some(existing) = self.tables.get(name) {
            return existing.number;
        }
        let number = self.next_table_number();
        self.next_table = number.0 + 1;
        let mut table = TableInfo {
            number,
            name: name.to_string(),
            indexes: BTreeMap::new(),
        };
        for builtin in [BY_ID, BY_CREATION_TIME] {
            let index = self.allocate_index();
            table.indexes.insert(builtin.to_string(), index);
            self.indexes.insert(
                index,
                IndexInfo {
                    number: index,
                    table: number,
                    name: builtin.to_string(),
                    fields: builtin_fields(builtin),
                    building: false,
                },
            );
        }
        self.tables.insert(name.to_string(), table);
        self.table_names.insert(number, name.to_string());
        number
    }

    fn allocate_index(&mut self) -> IndexNumber {
        let number = IndexNumber(self.next_index.max(1));
        self.next_index = number.0 + 1;
        number
    }

    /// Adds a user index (full fields computed here); returns its number.
    pub fn add_index(&mut self, table: &str, name: &str, declared: &[String]) -> IndexNumber {
        let number = self.add_building_index(table, name, declared);
        self.finish_building(number);
        number
    }

    /// Adds a user index in the building state (the table is created if needed): writes
    /// maintain it, queries do not see it until [`Catalog::finish_building`].
    pub fn add_building_index(
        &mut self,
        table: &str,
        name: &str,
        declared: &[String],
    ) -> IndexNumber {
        let table_number = self.create_table(table);
        let number = self.allocate_index();
        self.indexes.insert(
            number,
            IndexInfo {
                number,
                table: table_number,
                name: name.to_string(),
                fields: user_index_fields(declared),
                building: true,
            },
        );
        number
    }

    /// Makes a building index visible under its name, in place of any index of that name
    /// (which becomes garbage). False if `number` is not a building index.
    pub fn finish_building(&mut self, number: IndexNumber) -> bool {
        let Some(info) = self.indexes.get_mut(&number).filter(|i| i.building) else {
            return false;
        };
        info.building = false;
        let (table, name) = (info.table, info.name.clone());
        let Some(table_name) = self.table_names.get(&table).cloned() else {
            return false;
        };
        let replaced = self
            .tables
            .get_mut(&table_name)
            .and_then(|t| t.indexes.insert(name, number));
        if let Some(old) = replaced.filter(|old| *old != number) {
            self.indexes.remove(&old);
            self.garbage.insert(old);
        }
        true
    }

    /// Building indexes, with their tables.
    pub fn building(&self) -> impl Iterator<Item = &IndexInfo> {
        self.indexes.values().filter(|i| i.building)
    }

    /// Drops every building index (a build was abandoned): they become garbage.
    pub fn abandon_building(&mut self) -> Vec<IndexNumber> {
        let abandoned: Vec<IndexNumber> = self.building().map(|i| i.number).collect();
        for number in &abandoned {
            self.indexes.remove(number);
            self.garbage.insert(*number);
        }
        abandoned
    }

    /// Removes a user index; returns its number if it existed. Its entries are garbage
    /// until deleted ([`Catalog::garbage`]).
    pub fn remove_index(&mut self, table: &str, name: &str) -> Option<IndexNumber> {
        if name == BY_ID || name == BY_CREATION_TIME {
            return None;
        }
        let number = self.tables.get_mut(table)?.indexes.remove(name)?;
        self.indexes.remove(&number);
        self.garbage.insert(number);
        Some(number)
    }

    /// Dropped indexes whose entries may still be in storage.
    pub fn garbage(&self) -> impl Iterator<Item = IndexNumber> + '_ {
        self.garbage.iter().copied()
    }

    /// Forgets a garbage index once its entries are deleted.
    pub fn forget_garbage(&mut self, number: IndexNumber) -> bool {
        self.garbage.remove(&number)
    }

    /// Serializes the catalog for the [`CATALOG_GLOBAL`] global.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let record = CatalogRecord {
            format: CATALOG_FORMAT,
            version: self.version,
            next_table: self.next_table,
            next_index: self.next_index,
            building: self
                .building()
                .map(|i| BuildingRecord {
                    table: i.table.0,
                    index: IndexRecord {
                        number: i.number.0,
                        name: i.name.clone(),
                        fields: i.fields.clone(),
                    },
                })
                .collect(),
            garbage: self.garbage.iter().map(|n| n.0).collect(),
            tables: self
                .tables
                .values()
                .map(|t| TableRecord {
                    number: t.number.0,
                    name: t.name.clone(),
                    indexes: t
                        .indexes
                        .values()
                        .filter_map(|n| self.indexes.get(n))
                        .map(|i| IndexRecord {
                            number: i.number.0,
                            name: i.name.clone(),
                            fields: i.fields.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&record)
            .map_err(|e| EngineError::User(format!("cannot serialize catalog: {e}")))
    }

    /// Reads a catalog written by [`Catalog::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Catalog, String> {
        let record: CatalogRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("catalog: {e}"))?;
        if record.format != CATALOG_FORMAT {
            return Err(format!("catalog format {} is not supported", record.format));
        }
        let mut catalog = Catalog {
            version: record.version,
            next_table: record.next_table,
            next_index: record.next_index,
            ..Catalog::default()
        };
        for table in record.tables {
            let number = TableNumber(table.number);
            let mut info = TableInfo {
                number,
                name: table.name.clone(),
                indexes: BTreeMap::new(),
            };
            for index in table.indexes {
                let index_number = IndexNumber(index.number);
                info.indexes.insert(index.name.clone(), index_number);
                catalog.indexes.insert(
                    index_number,
                    IndexInfo {
                        number: index_number,
                        table: number,
                        name: index.name,
                        fields: index.fields,
                        building: false,
                    },
                );
            }
            catalog.table_names.insert(number, table.name.clone());
            catalog.tables.insert(table.name, info);
        }
        for building in record.building {
            let number = IndexNumber(building.index.number);
            catalog.indexes.insert(
                number,
                IndexInfo {
                    number,
                    table: TableNumber(building.table),
                    name: building.index.name,
                    fields: building.index.fields,
                    building: true,
                },
            );
        }
        catalog.garbage = record.garbage.into_iter().map(IndexNumber).collect();
        Ok(catalog)
    }
}

#[derive(Serialize, Deserialize)]
struct CatalogRecord {
    format: u32,
    version: u64,
    next_table: u32,
    next_index: u32,
    tables: Vec<TableRecord>,
    /// Added after format 1 came out; absent in older records.
    #[serde(default)]
    building: Vec<BuildingRecord>,
    #[serde(default)]
    garbage: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct BuildingRecord {
    table: u32,
    index: IndexRecord,
}

#[derive(Serialize, Deserialize)]
struct TableRecord {
    number: u32,
    name: String,
    indexes: Vec<IndexRecord>,
}

#[derive(Serialize, Deserialize)]
struct IndexRecord {
    number: u32,
    name: String,
    fields: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_reuses_numbers() {
        let mut catalog = Catalog::default();
        let orders = catalog.create_table("orders");
        let idx = catalog.add_index("orders", "by_shop", &["shopId".to_string()]);
        assert_eq!(catalog.remove_index("orders", "by_shop"), Some(idx));
        let again = catalog.add_index("orders", "by_shop", &["shopId".to_string()]);
        assert_ne!(idx, again, "index numbers are never reused");
        let restored = Catalog::from_bytes(&catalog.to_bytes().unwrap_or_default());
        assert_eq!(restored.as_ref(), Ok(&catalog));
        assert_eq!(catalog.table("orders").map(|t| t.number), Some(orders));
        let fields = &catalog
            .resolve_index("orders", "by_shop")
            .map(|i| i.fields.clone());
        assert_eq!(
            fields.as_ref().ok(),
            Some(&vec![
                "shopId".to_string(),
                "_creationTime".to_string(),
                "_id".to_string()
            ])
        );
        assert_eq!(catalog.garbage().collect::<Vec<_>>(), vec![idx]);
        // A building index is maintained but not found by name until it is finished.
        let building = catalog.add_building_index("orders", "by_shop", &["total".to_string()]);
        assert!(catalog.table_indexes(orders).any(|i| i.number == building));
        assert_eq!(
            catalog
                .resolve_index("orders", "by_shop")
                .map(|i| i.number)
                .ok(),
            Some(again)
        );
        let restored = Catalog::from_bytes(&catalog.to_bytes().unwrap_or_default());
        assert_eq!(
            restored.as_ref(),
            Ok(&catalog),
            "building indexes round-trip"
        );
        assert!(catalog.finish_building(building));
        assert_eq!(
            catalog
                .resolve_index("orders", "by_shop")
                .map(|i| i.number)
                .ok(),
            Some(building)
        );
        assert!(
            catalog.garbage().any(|n| n == again),
            "the replaced index is garbage"
        );
    }
}
