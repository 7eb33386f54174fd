//! Member offsets of kernel structs, read from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`). The eBPF programs are built without CO-RE, so the
//! TLS probes get the offsets of the socket fields they read from here at load time.
//!
//! Only what that needs is parsed: the type section (to skip every kind correctly),
//! struct/union members, typedef/const/volatile chains, and the string section.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// The data is not BTF (bad magic or header) or is cut short.
    #[error("not valid BTF data: {0}")]
    Invalid(&'static str),
    /// A type kind this reader does not know (a newer kernel's BTF).
    #[error("unknown BTF type kind {0}")]
    UnknownKind(u32),
    /// No struct of that name.
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    /// The struct has no such member (also looked for in anonymous members).
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Type {
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// Size or referenced type id.
    size_type: u32,
    /// Offset of the kind-specific data (struct members) in the type section.
    extra: usize,
}

/// Parsed BTF: types by id (id 0 is void) and names of structs.
pub struct Btf<'a> {
    types: Vec<Type>,
    type_data: &'a [u8],
    strings: &'a [u8],
    structs: HashMap<&'a str, u32>,
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, BtfError> {
    d.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Invalid("truncated"))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Invalid("bad magic (little-endian BTF expected)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len).ok_or(BtfError::Invalid("section out of bounds"))
        };
        let (type_data, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut btf = Btf { types: Vec::new(), type_data, strings, structs: HashMap::new() };
        btf.types.push(Type { kind: 0, vlen: 0, kind_flag: false, size_type: 0, extra: 0 });
        let mut at = 0;
        while at < type_data.len() {
            let (name, info, size_type) = (u32_at(type_data, at)?, u32_at(type_data, at + 4)?, u32_at(type_data, at + 8)?);
            let (vlen, kind, kind_flag) = (info & 0xffff, (info >> 24) & 0x1f, info >> 31 == 1);
            let extra = at + 12;
            let vlen_us = vlen as usize;
            let extra_len = match kind {
                1 | 14 | 17 => 4,                               // INT, VAR, DECL_TAG
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                3 => 12,                                         // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen_us,                 // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen_us,                           // ENUM, FUNC_PROTO
                other => return Err(BtfError::UnknownKind(other)),
            };
            let id = btf.types.len() as u32;
            btf.types.push(Type { kind, vlen, kind_flag, size_type, extra });
            if kind == KIND_STRUCT {
                if let Ok(n) = btf.name(name) {
                    if !n.is_empty() {
                        btf.structs.entry(n).or_insert(id);
                    }
                }
            }
            at = extra + extra_len;
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> Result<&'a str, BtfError> {
        let rest = self.strings.get(off as usize..).ok_or(BtfError::Invalid("string offset out of bounds"))?;
        let end = rest.iter().position(|&b| b == 0).ok_or(BtfError::Invalid("unterminated string"))?;
        std::str::from_utf8(&rest[..end]).map_err(|_| BtfError::Invalid("string not UTF-8"))
    }

    /// Follows typedef/const/volatile/restrict/type-tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in struct/union `t`, looking into anonymous members.
    fn find_member(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 || (t.kind != KIND_STRUCT && t.kind != KIND_UNION) {
            return None;
        }
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let (name, ty, off) = (u32_at(self.type_data, at).ok()?, u32_at(self.type_data, at + 4).ok()?, u32_at(self.type_data, at + 8).ok()?);
            // With kind_flag the high 8 bits hold a bitfield size.
            let bits = if t.kind_flag { off & 0x00ff_ffff } else { off };
            let name = self.name(name).ok()?;
            if name == member {
                return Some(bits / 8);
            }
            if name.is_empty() {
                if let Some(inner) = self.resolve(ty).and_then(|inner| self.find_member(inner, member, depth + 1)) {
                    return Some(bits / 8 + inner);
                }
            }
        }
        None
    }

    /// Byte offset of `member` (possibly inside anonymous unions/structs) in `strukt`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.structs.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let t = &self.types[id as usize];
        self.find_member(t, member, 0)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_string(), member: member.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with `struct outer { int a; union { int b; struct { short c; short d; }; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0short\0";
        let s = |name: &str| strings.windows(name.len() + 2).position(|w| w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0).unwrap() as u32 + 1;
        let mut t = Vec::new();
        let mut ty = |name: u32, info: u32, size: u32, extra: &[u32]| {
            for v in [name, info, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(s("int"), 1 << 24, 4, &[32]); // 1: int
        ty(s("short"), 1 << 24, 2, &[16]); // 2: short
        ty(0, (4 << 24) | 2, 4, &[s("c"), 2, 0, s("d"), 2, 16]); // 3: anon struct
        ty(0, (5 << 24) | 2, 4, &[s("b"), 1, 0, 0, 3, 0]); // 4: anon union
        ty(0, 8 << 24, 4, &[]); // 5: typedef of type 4, the union
        // 6: outer, its anonymous member through the typedef.
        ty(s("outer"), (4 << 24) | 2, 8, &[s("a"), 1, 0, 0, 5, 32]);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn members_are_found_through_anonymous_unions_structs_and_typedefs() {
        let data = sample();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "b"), Ok(4));
        assert_eq!(btf.member_offset("outer", "c"), Ok(4));
        assert_eq!(btf.member_offset("outer", "d"), Ok(6));
        assert!(matches!(btf.member_offset("outer", "e"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member_offset("inner", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut data = sample();
        data.truncate(data.len() - 20);
        let _ = Btf::parse(&data);
    }

    /// On a machine with kernel BTF, the socket fields the TLS probes read are found
    /// where the kernel's own headers put them (sock_common's fixed head).
    #[test]
    fn this_kernels_sock_common_offsets() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else { return };
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("sock_common", "skc_daddr"), Ok(0));
        assert_eq!(btf.member_offset("sock_common", "skc_rcv_saddr"), Ok(4));
        assert_eq!(btf.member_offset("sock_common", "skc_dport"), Ok(12));
        assert_eq!(btf.member_offset("sock_common", "skc_num"), Ok(14));
        assert_eq!(btf.member_offset("sock_common", "skc_family"), Ok(16));
        assert_eq!(btf.member_offset("sock", "__sk_common"), Ok(0));
        let v6 = btf.member_offset("sock_common", "skc_v6_daddr").unwrap();
        assert_eq!(btf.member_offset("sock_common", "skc_v6_rcv_saddr"), Ok(v6 + 16));
    }
}
