//! A small read-only reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), as described in
//! the kernel's Documentation/bpf/btf.rst: just what the offsets (`collect::offsets`) and the
//! preflight checks (`check`) need. Types are found by name, followed through typedefs and
//! qualifiers, and a struct's or union's members are listed with their names and bit offsets.
//!
//! Only little-endian BTF is read (every host sentinel runs on); a big-endian blob is an error.
//! Split BTF (kernel modules' BTF on top of vmlinux's) is not supported. Every read is
//! bounds-checked: malformed input is an `Err`, never a panic or an endless loop.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};

const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
const HEADER_LEN: usize = 24;
/// name_off, info, size/type.
const TYPE_LEN: usize = 12;

/// A type's kind (`BTF_KIND_*`). `Void` is type id 0, which has no record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    /// The kind numbered `raw`, and the size of the data that follows its record for `vlen`.
    fn decode(raw: u32, vlen: usize) -> Option<(Kind, usize)> {
        Some(match raw {
            1 => (Kind::Int, 4),
            2 => (Kind::Ptr, 0),
            3 => (Kind::Array, 12),
            4 => (Kind::Struct, 12 * vlen),
            5 => (Kind::Union, 12 * vlen),
            6 => (Kind::Enum, 8 * vlen),
            7 => (Kind::Fwd, 0),
            8 => (Kind::Typedef, 0),
            9 => (Kind::Volatile, 0),
            10 => (Kind::Const, 0),
            11 => (Kind::Restrict, 0),
            12 => (Kind::Func, 0),
            13 => (Kind::FuncProto, 8 * vlen),
            14 => (Kind::Var, 4),
            15 => (Kind::Datasec, 12 * vlen),
            16 => (Kind::Float, 0),
            17 => (Kind::DeclTag, 4),
            18 => (Kind::TypeTag, 0),
            19 => (Kind::Enum64, 12 * vlen),
            _ => return None,
        })
    }

    /// Kinds whose third word is a type id (rather than a size).
    fn refers(self) -> bool {
        matches!(
            self,
            Kind::Ptr
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::FuncProto
                | Kind::Var
                | Kind::DeclTag
                | Kind::TypeTag
        )
    }

    /// Typedefs and qualifiers: what `Btf::resolve` looks through.
    fn is_alias(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

/// One type record. Cheap to copy; its name and members are read through the `Btf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Type {
    pub id: u32,
    pub kind: Kind,
    kind_flag: bool,
    vlen: usize,
    name_off: u32,
    /// The size (INT, STRUCT, UNION, ENUM, DATASEC, FLOAT) or the referred type id.
    size_or_type: u32,
    /// Where the kind's trailing data starts in the type section.
    data: usize,
}

impl Type {
    /// The type this one refers to (typedef, qualifier, pointer, function...), if its kind
    /// refers to one.
    pub fn referred(&self) -> Option<u32> {
        self.kind.refers().then_some(self.size_or_type)
    }
}

/// A struct or union member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// Empty for an anonymous member.
    pub name: &'a str,
    pub type_id: u32,
    /// From the start of the enclosing struct or union.
    pub bit_offset: u32,
    /// `Some` (0 for a plain member) when the struct's kind_flag is set, `None` otherwise
    /// (bitfields are then described by their INT type).
    pub bitfield_size: Option<u32>,
}

pub struct Btf {
    /// The type section.
    types_sec: Vec<u8>,
    /// The string section.
    strings: Vec<u8>,
    /// Type id `i` is `types[i - 1]`.
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("parsing BTF {}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let header = bytes
            .get(..HEADER_LEN)
            .ok_or_else(|| anyhow!("BTF truncated: {} bytes, no full header", bytes.len()))?;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic == MAGIC.swap_bytes() {
            bail!("big-endian BTF is not supported (only little-endian)");
        }
        ensure!(
            magic == MAGIC,
            "not BTF: magic {magic:#06x}, expected {MAGIC:#06x}"
        );
        ensure!(
            header[2] == VERSION,
            "BTF version {} unsupported (expected {VERSION})",
            header[2]
        );
        let word = |at: usize| u32_at(header, at).map_or(0, |w| w as usize);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (word(4), word(8), word(12), word(16), word(20));
        ensure!(
            hdr_len >= HEADER_LEN,
            "BTF header length {hdr_len} shorter than {HEADER_LEN}"
        );
        let section = |what: &str, off: usize, len: usize| -> Result<Vec<u8>> {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some((start, start.checked_add(len)?)))
                .and_then(|(start, end)| bytes.get(start..end))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    anyhow!(
                        "BTF {what} section (offset {off}, length {len} after a {hdr_len}-byte \
                         header) runs past the end of the {} bytes",
                        bytes.len()
                    )
                })
        };
        let types_sec = section("type", type_off, type_len)?;
        let strings = section("string", str_off, str_len)?;

        let mut btf = Btf {
            types_sec,
            strings,
            types: Vec::new(),
            by_name: HashMap::new(),
        };
        let mut at = 0;
        while at < btf.types_sec.len() {
            let id = u32::try_from(btf.types.len() + 1).context("BTF: too many types")?;
            let word = |i: usize| {
                u32_at(&btf.types_sec, at + 4 * i)
                    .ok_or_else(|| anyhow!("BTF type {id} truncated at type section offset {at}"))
            };
            let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let vlen = (info & 0xffff) as usize;
            let raw_kind = (info >> 24) & 0x1f;
            let (kind, extra) = Kind::decode(raw_kind, vlen)
                .ok_or_else(|| anyhow!("BTF type {id}: unknown kind {raw_kind}"))?;
            let data = at + TYPE_LEN;
            let end = data + extra;
            ensure!(
                end <= btf.types_sec.len(),
                "BTF type {id} ({kind:?}, {vlen} entries) runs past the end of the type section"
            );
            btf.types.push(Type {
                id,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                name_off,
                size_or_type,
                data,
            });
            at = end;
        }
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for ty in &btf.types {
            let name = btf
                .string(ty.name_off)
                .with_context(|| format!("BTF type {}", ty.id))?;
            if !name.is_empty() {
                by_name.entry(name.to_string()).or_default().push(ty.id);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// The NUL-terminated string at `off` in the string section.
    fn string(&self, off: u32) -> Result<&str> {
        let rest = self
            .strings
            .get(off as usize..)
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "BTF string offset {off} out of range (string section of {} bytes)",
                    self.strings.len()
                )
            })?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| anyhow!("BTF string at offset {off} has no terminating NUL"))?;
        std::str::from_utf8(&rest[..len])
            .map_err(|_| anyhow!("BTF string at offset {off} is not UTF-8"))
    }

    /// Number of types, void excluded (ids run from 1 to this).
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The type with id `id`; 0 is void.
    pub fn type_by_id(&self, id: u32) -> Result<Type> {
        if id == 0 {
            return Ok(Type {
                id: 0,
                kind: Kind::Void,
                kind_flag: false,
                vlen: 0,
                name_off: 0,
                size_or_type: 0,
                data: 0,
            });
        }
        self.types
            .get(id as usize - 1)
            .copied()
            .ok_or_else(|| anyhow!("BTF type id {id} out of range ({} types)", self.types.len()))
    }

    /// Ids of every type named `name`, of any kind (empty if none).
    pub fn ids_by_name(&self, name: &str) -> &[u32] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    /// Every type named `name`, of any kind, in id order.
    pub fn types_by_name(&self, name: &str) -> Result<Vec<Type>> {
        self.ids_by_name(name)
            .iter()
            .map(|&id| self.type_by_id(id))
            .collect()
    }

    /// The type's name; empty for an anonymous one.
    pub fn name(&self, ty: &Type) -> Result<&str> {
        self.string(ty.name_off)
    }

    /// The type with id `id`, looked through typedefs and qualifiers (const, volatile,
    /// restrict, type tags). A cycle among them is an error.
    pub fn resolve(&self, id: u32) -> Result<Type> {
        let mut ty = self.type_by_id(id)?;
        // A chain longer than the number of types has a cycle.
        for _ in 0..=self.types.len() {
            if !ty.kind.is_alias() {
                return Ok(ty);
            }
            ty = self
                .type_by_id(ty.size_or_type)
                .with_context(|| format!("BTF type {} ({:?}) refers to it", ty.id, ty.kind))?;
        }
        bail!("BTF: reference cycle through typedefs or qualifiers from type id {id}")
    }

    /// The members of a struct or union, in order.
    pub fn members(&self, ty: &Type) -> Result<Vec<Member<'_>>> {
        ensure!(
            matches!(ty.kind, Kind::Struct | Kind::Union),
            "BTF type {} is a {:?}, not a struct or union",
            ty.id,
            ty.kind
        );
        (0..ty.vlen)
            .map(|i| {
                let at = ty.data + 12 * i;
                let word = |w: usize| {
                    u32_at(&self.types_sec, at + 4 * w)
                        .ok_or_else(|| anyhow!("BTF type {} member {i} truncated", ty.id))
                };
                let (name_off, type_id, offset) = (word(0)?, word(1)?, word(2)?);
                let name = self
                    .string(name_off)
                    .with_context(|| format!("BTF type {} member {i}", ty.id))?;
                let (bit_offset, bitfield_size) = if ty.kind_flag {
                    (offset & 0x00ff_ffff, Some(offset >> 24))
                } else {
                    (offset, None)
                };
                Ok(Member {
                    name,
                    type_id,
                    bit_offset,
                    bitfield_size,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::offsets::{Offsets, VMLINUX_BTF, member_offset};

    const INT: u32 = 1;
    const PTR: u32 = 2;
    const ARRAY: u32 = 3;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const ENUM: u32 = 6;
    const FWD: u32 = 7;
    const TYPEDEF: u32 = 8;
    const VOLATILE: u32 = 9;
    const CONST: u32 = 10;
    const RESTRICT: u32 = 11;
    const FUNC: u32 = 12;
    const FUNC_PROTO: u32 = 13;
    const VAR: u32 = 14;
    const DATASEC: u32 = 15;
    const FLOAT: u32 = 16;
    const DECL_TAG: u32 = 17;
    const TYPE_TAG: u32 = 18;
    const ENUM64: u32 = 19;

    /// Builds a BTF blob by hand: types are appended in id order (the first is id 1).
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Blob {
        fn new() -> Self {
            Blob {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        /// A type record; its trailing data follows with `words`. Returns its id.
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, third: u32) -> u32 {
            let name_off = self.str(name);
            let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
            self.words(&[name_off, info, third]);
            self.next_id += 1;
            self.next_id - 1
        }

        /// A struct or union with members (name, type id, offset word as stored).
        fn aggregate(
            &mut self,
            name: &str,
            kind: u32,
            kflag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.ty(name, kind, members.len() as u32, kflag, size);
            for &(m, type_id, offset) in members {
                let name_off = self.str(m);
                self.words(&[name_off, type_id, offset]);
            }
            id
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(VERSION);
            out.push(0);
            let hdr_len = HEADER_LEN as u32;
            let type_len = self.types.len() as u32;
            for w in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }

        fn parse(&self) -> Result<Btf> {
            Btf::from_bytes(&self.bytes())
        }
    }

    #[track_caller]
    fn err_of<T>(r: Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// struct outer { int a; union { int b; struct { int c; int d; }; }; long e; }
    fn nested_anonymous() -> Blob {
        let mut b = Blob::new();
        let int = b.ty("int", INT, 0, false, 4);
        b.words(&[32]); // encoding: 32 bits
        let inner = b.aggregate("", STRUCT, false, 8, &[("c", int, 0), ("d", int, 32)]);
        let union = b.aggregate("", UNION, false, 8, &[("b", int, 0), ("", inner, 0)]);
        b.aggregate(
            "outer",
            STRUCT,
            false,
            24,
            &[("a", int, 0), ("", union, 64), ("e", int, 128)],
        );
        b
    }

    #[test]
    fn nested_anonymous_union_member() {
        let btf = nested_anonymous().parse().unwrap();
        assert_eq!(btf.len(), 4);
        let outer = btf.types_by_name("outer").unwrap()[0];
        assert_eq!(outer.kind, Kind::Struct);
        let members = btf.members(&outer).unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "", "e"]);
        assert_eq!(members[1].bit_offset, 64);
        assert_eq!(btf.resolve(members[1].type_id).unwrap().kind, Kind::Union);
        assert_eq!(members[1].bitfield_size, None);
        assert_eq!(member_offset(&btf, "outer", &["a"]).unwrap(), 0);
        assert_eq!(member_offset(&btf, "outer", &["b"]).unwrap(), 8);
        assert_eq!(member_offset(&btf, "outer", &["d"]).unwrap(), 12);
        assert_eq!(member_offset(&btf, "outer", &["e"]).unwrap(), 16);
        assert!(
            err_of(member_offset(&btf, "outer", &["zz"])).contains("BTF: outer. has no member zz")
        );
        assert!(err_of(member_offset(&btf, "nope", &["a"])).contains("BTF: no type named nope"));
        assert!(
            err_of(member_offset(&btf, "int", &["a"]))
                .contains("BTF: int is not a struct with members")
        );
    }

    #[test]
    fn bitfield_with_kind_flag() {
        let mut b = Blob::new();
        let int = b.ty("unsigned int", INT, 0, false, 4);
        b.words(&[32]);
        b.aggregate(
            "flags",
            STRUCT,
            true,
            16,
            &[
                ("whole", int, 0),
                ("bit", int, (3 << 24) | 35),
                ("after", int, 64),
            ],
        );
        let btf = b.parse().unwrap();
        let ty = btf.types_by_name("flags").unwrap()[0];
        let members = btf.members(&ty).unwrap();
        assert_eq!(members[1].bit_offset, 35);
        assert_eq!(members[1].bitfield_size, Some(3));
        assert_eq!(members[2].bit_offset, 64);
        assert_eq!(members[2].bitfield_size, Some(0));
        assert_eq!(member_offset(&btf, "flags", &["after"]).unwrap(), 8);
        assert!(
            err_of(member_offset(&btf, "flags", &["bit"])).contains("member bit is a bitfield")
        );
    }

    #[test]
    fn typedef_chain_and_qualifiers() {
        let mut b = Blob::new();
        let int = b.ty("int", INT, 0, false, 4);
        b.words(&[32]);
        let inner = b.aggregate("inner", STRUCT, false, 8, &[("x", int, 0), ("y", int, 32)]);
        let volatile = b.ty("", VOLATILE, 0, false, inner);
        let konst = b.ty("", CONST, 0, false, volatile);
        let restrict = b.ty("", RESTRICT, 0, false, konst);
        let tag = b.ty("user", TYPE_TAG, 0, false, restrict);
        let t2 = b.ty("inner_t", TYPEDEF, 0, false, tag);
        let t1 = b.ty("inner_tt", TYPEDEF, 0, false, t2);
        b.aggregate(
            "outer",
            STRUCT,
            false,
            16,
            &[("pad", int, 0), ("in", t1, 64)],
        );
        let btf = b.parse().unwrap();
        assert_eq!(btf.resolve(t1).unwrap().id, inner);
        assert_eq!(btf.resolve(konst).unwrap().id, inner);
        assert_eq!(btf.resolve(int).unwrap().id, int);
        assert_eq!(btf.resolve(0).unwrap().kind, Kind::Void);
        assert_eq!(btf.type_by_id(t1).unwrap().referred(), Some(t2));
        assert_eq!(btf.ids_by_name("inner_tt"), [t1]);
        assert_eq!(member_offset(&btf, "outer", &["in", "y"]).unwrap(), 12);
    }

    /// One type of every kind, each with trailing data, then a struct: its id and members
    /// are right only if every record before it was skipped by its right size.
    #[test]
    fn every_kind_is_skipped() {
        let mut b = Blob::new();
        let int = b.ty("int", INT, 0, false, 4);
        b.words(&[32]);
        let ptr = b.ty("", PTR, 0, false, int);
        b.ty("", ARRAY, 0, false, 0);
        b.words(&[int, int, 4]);
        b.aggregate("u", UNION, false, 4, &[("a", int, 0)]);
        b.ty("e", ENUM, 2, false, 4);
        b.words(&[b.strings.len() as u32 - 1, 0, 0, 1]);
        b.ty("fwd", FWD, 0, false, 0);
        let proto = b.ty("", FUNC_PROTO, 2, false, int);
        b.words(&[0, int, 0, ptr]);
        let func = b.ty("f", FUNC, 1, false, proto);
        b.ty("v", VAR, 0, false, int);
        b.words(&[1]);
        b.ty(".data", DATASEC, 1, false, 4);
        b.words(&[int, 0, 4]);
        b.ty("double", FLOAT, 0, false, 8);
        b.ty("tag", DECL_TAG, 0, false, func);
        b.words(&[u32::MAX]);
        b.ty("e64", ENUM64, 1, false, 8);
        b.words(&[0, 1, 2]);
        let last = b.aggregate("last", STRUCT, false, 8, &[("p", ptr, 0), ("q", int, 32)]);
        let btf = b.parse().unwrap();
        assert_eq!(btf.len() as u32, last);
        assert_eq!(btf.ids_by_name("last"), [last]);
        assert_eq!(btf.ids_by_name("f"), [func]);
        assert_eq!(btf.type_by_id(func).unwrap().kind, Kind::Func);
        assert_eq!(btf.types_by_name("e64").unwrap()[0].kind, Kind::Enum64);
        assert!(btf.ids_by_name("absent").is_empty());
        assert_eq!(member_offset(&btf, "last", &["q"]).unwrap(), 4);
    }

    #[test]
    fn malformed_headers_are_errors() {
        let good = nested_anonymous().bytes();
        assert!(err_of(Btf::from_bytes(&[])).contains("no full header"));
        assert!(err_of(Btf::from_bytes(&good[..23])).contains("no full header"));
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(err_of(Btf::from_bytes(&bad)).contains("not BTF: magic"));
        let mut big_endian = good.clone();
        big_endian.swap(0, 1);
        assert!(err_of(Btf::from_bytes(&big_endian)).contains("big-endian BTF is not supported"));
        let mut version = good.clone();
        version[2] = 2;
        assert!(err_of(Btf::from_bytes(&version)).contains("BTF version 2 unsupported"));
        let mut short_hdr = good.clone();
        short_hdr[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert!(err_of(Btf::from_bytes(&short_hdr)).contains("header length 8"));
        // Sections past the end: the header's own length, a section's offset, its length.
        for (at, value) in [
            (4, 1000u32),
            (8, 10_000),
            (12, 10_000),
            (16, 10_000),
            (20, u32::MAX),
        ] {
            let mut past = good.clone();
            past[at..at + 4].copy_from_slice(&value.to_le_bytes());
            assert!(
                err_of(Btf::from_bytes(&past)).contains("past the end"),
                "header word at {at} = {value}"
            );
        }
        // The whole blob cut short leaves its string section past the end.
        assert!(err_of(Btf::from_bytes(&good[..good.len() - 1])).contains("past the end"));
    }

    #[test]
    fn malformed_types_are_errors() {
        // A type record cut short: the type section is not a whole number of records.
        let mut b = Blob::new();
        b.ty("int", INT, 0, false, 4);
        b.words(&[32]);
        b.types.truncate(b.types.len() - 2);
        assert!(err_of(b.parse()).contains("past the end of the type section"));
        let mut b = Blob::new();
        b.ty("x", PTR, 0, false, 0);
        b.types.truncate(10);
        assert!(err_of(b.parse()).contains("BTF type 1 truncated"));
        // A struct whose vlen claims more members than there are.
        let mut b = Blob::new();
        b.ty("s", STRUCT, 3, false, 8);
        b.words(&[0, 0, 0]);
        assert!(err_of(b.parse()).contains("BTF type 1 (Struct, 3 entries) runs past the end"));
        // An unknown kind.
        let mut b = Blob::new();
        b.ty("x", 25, 0, false, 0);
        assert!(err_of(b.parse()).contains("BTF type 1: unknown kind 25"));
        // A type's name offset out of range, or a name without its NUL.
        let mut b = Blob::new();
        b.ty("x", PTR, 0, false, 0);
        b.types[0..4].copy_from_slice(&500u32.to_le_bytes());
        assert!(err_of(b.parse()).contains("BTF string offset 500 out of range"));
        let mut b = Blob::new();
        b.ty("x", PTR, 0, false, 0);
        b.strings.pop();
        assert!(err_of(b.parse()).contains("has no terminating NUL"));
        // A member's name offset out of range.
        let mut b = nested_anonymous();
        let len = b.types.len();
        b.types[len - 12..len - 8].copy_from_slice(&9999u32.to_le_bytes());
        let btf = b.parse().unwrap();
        let outer = btf.types_by_name("outer").unwrap()[0];
        assert!(err_of(btf.members(&outer)).contains("BTF string offset 9999 out of range"));
        assert!(err_of(member_offset(&btf, "outer", &["e"])).contains("9999"));
        // Members of something that is not a struct or union.
        assert!(err_of(btf.members(&btf.type_by_id(1).unwrap())).contains("not a struct"));
    }

    #[test]
    fn type_id_out_of_range_is_an_error() {
        let mut b = Blob::new();
        let td = b.ty("t", TYPEDEF, 0, false, 77);
        b.aggregate("s", STRUCT, false, 8, &[("m", 78, 0)]);
        let btf = b.parse().unwrap();
        assert!(err_of(btf.type_by_id(3)).contains("BTF type id 3 out of range (2 types)"));
        assert!(err_of(btf.type_by_id(u32::MAX)).contains("out of range"));
        assert!(err_of(btf.resolve(td)).contains("BTF type id 77 out of range"));
        assert!(err_of(member_offset(&btf, "s", &["m"])).contains("BTF type id 78 out of range"));
    }

    #[test]
    fn reference_cycles_are_errors() {
        let mut b = Blob::new();
        // typedef a -> const -> volatile -> typedef a.
        let a = b.ty("a", TYPEDEF, 0, false, 2);
        b.ty("", CONST, 0, false, 3);
        b.ty("", VOLATILE, 0, false, a);
        let own = b.ty("own", TYPEDEF, 0, false, 4);
        // A struct whose anonymous member is the struct itself.
        let s = b.aggregate("s", STRUCT, false, 8, &[("", 5, 0)]);
        b.aggregate("t", STRUCT, false, 8, &[("x", a, 0), ("y", own, 0)]);
        let btf = b.parse().unwrap();
        for id in [a, 2, 3, own] {
            assert!(
                err_of(btf.resolve(id)).contains("reference cycle"),
                "from {id}"
            );
        }
        assert!(err_of(member_offset(&btf, "t", &["x"])).contains("reference cycle"));
        assert!(err_of(member_offset(&btf, "s", &["x"])).contains("nested too deep"));
        assert_eq!(s, 5);
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic nor hang the reader, nor what offsets.rs does with it.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            exercise(&bytes);
        }

        /// The same past the header: a valid header over arbitrary sections.
        #[test]
        fn arbitrary_sections_never_panic(
            types in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            strings in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut blob = Blob::new();
            blob.types = types;
            blob.strings = strings;
            exercise(&blob.bytes());
        }

        /// Well-formed records with arbitrary fields (kinds, vlens, ids, offsets).
        #[test]
        fn arbitrary_records_never_panic(
            records in proptest::collection::vec(
                (0u32..21, 0u32..4, proptest::bool::ANY, 0u32..12, 0u32..40),
                0..12,
            ),
            extra in proptest::collection::vec(0u32..14, 0..40),
        ) {
            let mut blob = Blob::new();
            blob.str("a");
            blob.str("s");
            for (kind, vlen, kflag, third, name) in records {
                blob.words(&[name, (u32::from(kflag) << 31) | (kind << 24) | vlen, third]);
            }
            blob.words(&extra);
            exercise(&blob.bytes());
        }
    }

    fn exercise(bytes: &[u8]) {
        let Ok(btf) = Btf::from_bytes(bytes) else {
            return;
        };
        for id in 0..=btf.len() as u32 + 1 {
            let Ok(ty) = btf.type_by_id(id) else { continue };
            let _ = btf.name(&ty);
            let _ = btf.resolve(id);
            let _ = btf.members(&ty);
        }
        for name in ["a", "s"] {
            let _ = member_offset(&btf, name, &["a", "s"]);
            let _ = member_offset(&btf, name, &["s"]);
        }
    }

    /// One type of `bpftool btf dump ... format raw`.
    #[derive(Default)]
    struct DumpType {
        kind: String,
        name: String,
        /// `type_id=` (or `ret_type_id=` of a FUNC_PROTO).
        referred: Option<u32>,
        /// Struct and union members: name, type id, bit offset, bitfield size (0 if none).
        members: Vec<(String, u32, u32, u32)>,
    }

    fn attr(line: &str, key: &str) -> Option<u32> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_end_matches(',').parse().expect("a number"))
    }

    fn quoted(line: &str) -> String {
        let start = line.find('\'').expect("a quoted name") + 1;
        let len = line[start..].find('\'').expect("a closing quote");
        match &line[start..start + len] {
            "(anon)" => String::new(),
            name => name.to_string(),
        }
    }

    /// Parses bpftool's raw dump: index i holds type id i + 1.
    fn parse_dump(text: &str) -> Vec<DumpType> {
        let mut types: Vec<DumpType> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ").expect("[id] KIND");
                assert_eq!(id.parse::<usize>().unwrap(), types.len() + 1);
                let kind = rest.split_whitespace().next().unwrap().to_string();
                let referred = if kind == "FUNC_PROTO" {
                    attr(rest, "ret_type_id")
                } else {
                    attr(rest, "type_id")
                };
                types.push(DumpType {
                    name: quoted(rest),
                    kind,
                    referred,
                    members: Vec::new(),
                });
            } else if line.starts_with('\t') {
                let ty = types.last_mut().expect("a member after its type");
                if ty.kind == "STRUCT" || ty.kind == "UNION" {
                    ty.members.push((
                        quoted(line),
                        attr(line, "type_id").expect("type_id"),
                        attr(line, "bits_offset").expect("bits_offset"),
                        attr(line, "bitfield_size").unwrap_or(0),
                    ));
                }
            }
        }
        types
    }

    fn dump_kind(kind: Kind) -> &'static str {
        match kind {
            Kind::Void => "VOID",
            Kind::Int => "INT",
            Kind::Ptr => "PTR",
            Kind::Array => "ARRAY",
            Kind::Struct => "STRUCT",
            Kind::Union => "UNION",
            Kind::Enum => "ENUM",
            Kind::Fwd => "FWD",
            Kind::Typedef => "TYPEDEF",
            Kind::Volatile => "VOLATILE",
            Kind::Const => "CONST",
            Kind::Restrict => "RESTRICT",
            Kind::Func => "FUNC",
            Kind::FuncProto => "FUNC_PROTO",
            Kind::Var => "VAR",
            Kind::Datasec => "DATASEC",
            Kind::Float => "FLOAT",
            Kind::DeclTag => "DECL_TAG",
            Kind::TypeTag => "TYPE_TAG",
            Kind::Enum64 => "ENUM64",
        }
    }

    /// The member offset walk again, on bpftool's view of the types only.
    fn dump_offset(dump: &[DumpType], root: &str, path: &[&str]) -> Option<u32> {
        fn resolve(dump: &[DumpType], mut id: u32) -> u32 {
            while let Some(t) = id.checked_sub(1).map(|i| &dump[i as usize])
                && matches!(
                    t.kind.as_str(),
                    "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
                )
            {
                id = t.referred.unwrap();
            }
            id
        }
        fn find(dump: &[DumpType], id: u32, name: &str) -> Option<(u32, u32)> {
            let ty = &dump[id.checked_sub(1)? as usize];
            for (member, type_id, bits, _) in &ty.members {
                let resolved = resolve(dump, *type_id);
                if member == name {
                    return Some((*bits, resolved));
                }
                if member.is_empty()
                    && let Some((inner, found)) = find(dump, resolved, name)
                {
                    return Some((bits + inner, found));
                }
            }
            None
        }
        let mut id = dump
            .iter()
            .position(|t| t.kind == "STRUCT" && t.name == root && !t.members.is_empty())?
            as u32
            + 1;
        let mut bits = 0;
        for name in path {
            let (off, next) = find(dump, id, name)?;
            bits += off;
            id = next;
        }
        Some(bits / 8)
    }

    /// The reader against bpftool on the running kernel's BTF: every type's kind, name and
    /// referred type, every struct's and union's members, each offset sentinel resolves and
    /// each name `check` looks up. Needs bpftool (CI installs it: .ci/run).
    #[test]
    fn agrees_with_bpftool_on_this_kernel() {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            assert!(!ci, "CI host lacks {VMLINUX_BTF}");
            eprintln!("SKIPPED: no {VMLINUX_BTF} on this host");
            return;
        }
        let output = match std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        {
            Ok(output) if output.status.success() => output,
            other => {
                assert!(
                    !ci,
                    "bpftool cannot dump {VMLINUX_BTF} ({other:?}), and CI=true: \
                     CI installs bpftool (.ci/run)"
                );
                eprintln!("SKIPPED: bpftool missing or failing (apt-get install bpftool)");
                return;
            }
        };
        let dump = parse_dump(std::str::from_utf8(&output.stdout).unwrap());
        let btf = Btf::from_file(path).unwrap();
        assert_eq!(btf.len(), dump.len(), "number of types");
        let mut members = 0;
        for (i, want) in dump.iter().enumerate() {
            let id = i as u32 + 1;
            let ty = btf.type_by_id(id).unwrap();
            assert_eq!(dump_kind(ty.kind), want.kind, "kind of type {id}");
            assert_eq!(btf.name(&ty).unwrap(), want.name, "name of type {id}");
            if ty.kind.refers() {
                assert_eq!(ty.referred(), want.referred, "type {id} refers to");
            }
            if matches!(ty.kind, Kind::Struct | Kind::Union) {
                let got: Vec<_> = btf
                    .members(&ty)
                    .unwrap()
                    .iter()
                    .map(|m| {
                        let size = m.bitfield_size.unwrap_or(0);
                        (m.name.to_string(), m.type_id, m.bit_offset, size)
                    })
                    .collect();
                assert_eq!(got, want.members, "members of type {id} {}", want.name);
                members += got.len();
            }
        }

        let o = Offsets::from_btf(&btf).unwrap();
        let si = o.sched_info.clone().unwrap();
        let state = if dump_offset(&dump, "task_struct", &["__state"]).is_some() {
            "__state"
        } else {
            "state"
        };
        let cases: [(&str, u32, &str, &[&str]); 22] = [
            ("task_pid", o.task_pid, "task_struct", &["pid"]),
            ("task_state", o.task_state, "task_struct", &[state]),
            ("skb_len", o.skb_len, "sk_buff", &["len"]),
            ("skb_dev", o.skb_dev, "sk_buff", &["dev"]),
            ("dev_ifindex", o.dev_ifindex, "net_device", &["ifindex"]),
            ("dev_name", o.dev_name, "net_device", &["name"]),
            ("dev_nd_net", o.dev_nd_net, "net_device", &["nd_net", "net"]),
            ("net_ns_inum", o.net_ns_inum, "net", &["ns", "inum"]),
            ("task_tgid", o.task_tgid, "task_struct", &["tgid"]),
            (
                "task_exit_code",
                o.task_exit_code,
                "task_struct",
                &["exit_code"],
            ),
            ("task_cgroups", o.task_cgroups, "task_struct", &["cgroups"]),
            (
                "css_set_dfl_cgrp",
                o.css_set_dfl_cgrp,
                "css_set",
                &["dfl_cgrp"],
            ),
            ("cgroup_kn", o.cgroup_kn, "cgroup", &["kn"]),
            ("kernfs_node_id", o.kernfs_node_id, "kernfs_node", &["id"]),
            ("task_nsproxy", o.task_nsproxy, "task_struct", &["nsproxy"]),
            ("nsproxy_mnt_ns", o.nsproxy_mnt_ns, "nsproxy", &["mnt_ns"]),
            (
                "mnt_ns_inum",
                o.mnt_ns_inum,
                "mnt_namespace",
                &["ns", "inum"],
            ),
            (
                "sock_net",
                o.sock_net,
                "sock",
                &["__sk_common", "skc_net", "net"],
            ),
            (
                "task_last_queued",
                si.task_last_queued,
                "task_struct",
                &["sched_info", "last_queued"],
            ),
            (
                "task_cfs_rq",
                si.task_cfs_rq,
                "task_struct",
                &["se", "cfs_rq"],
            ),
            ("cfs_rq_rq", si.cfs_rq_rq, "cfs_rq", &["rq"]),
            ("rq_clock", si.rq_clock, "rq", &["clock"]),
        ];
        assert!(o.has_netns);
        let mut report = Vec::new();
        for (field, got, root, path) in cases.into_iter().chain([(
            "rq_clock_task",
            si.rq_clock_task,
            "rq",
            &["clock_task"][..],
        )]) {
            let want = dump_offset(&dump, root, path);
            assert_eq!(Some(got), want, "{field}: {root}.{}", path.join("."));
            report.push(format!("{field}={got}"));
        }

        let mut names: Vec<String> = crate::collect::loader::HOOKS
            .iter()
            .map(|h| format!("btf_trace_{}", h.tracepoint))
            .collect();
        names.push("bpf_iter_task".to_string());
        names.push("no_such_type_in_any_kernel".to_string());
        for name in &names {
            let want: Vec<u32> = (1..=dump.len() as u32)
                .filter(|&id| dump[id as usize - 1].name == *name)
                .collect();
            assert_eq!(btf.ids_by_name(name), want, "ids named {name}");
            report.push(format!("{name}={want:?}"));
        }
        eprintln!(
            "agrees with bpftool: {} types, {members} members; {}",
            dump.len(),
            report.join(" ")
        );
    }
}
