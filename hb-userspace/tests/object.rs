//! Properties of the compiled XDP program that no run on this machine can
//! show: x86 keeps stores in order, so a publication that relies on it
//! works here and breaks on arm64.

/// BPF_STX | BPF_DW | BPF_ATOMIC: a 64-bit atomic operation.
const ATOMIC_DW: u8 = 0xdb;
/// Its immediate for an exchange: BPF_XCHG (0xe0) | BPF_FETCH (0x01).
const XCHG: i32 = 0xe1;
/// Its immediate for a compare-and-exchange: BPF_CMPXCHG (0xf0) |
/// BPF_FETCH.
const CMPXCHG: i32 = 0xf1;

/// The instructions of the object's section `name`, as (opcode, imm).
fn section(object: &[u8], name: &str) -> Vec<(u8, i32)> {
    let u16_at = |o: usize| u16::from_le_bytes(object[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(object[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(object[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&object[..4], b"\x7fELF", "not an ELF object");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18);
    for i in 0..shnum {
        let h = header(i);
        let at = names + u32_at(h);
        let len = object[at..].iter().position(|&b| b == 0).unwrap();
        if &object[at..at + len] == name.as_bytes() {
            let (offset, size) = (u64_at(h + 0x18), u64_at(h + 0x20));
            return object[offset..offset + size]
                .chunks_exact(8)
                .map(|insn| (insn[0], i32::from_le_bytes(insn[4..8].try_into().unwrap())))
                .collect();
        }
    }
    panic!("no section {name} in the object");
}

#[test]
fn a_new_host_is_published_with_an_ordered_store() {
    // The program stamps a new host's key and count, then its last-seen
    // time, which tells the sweeper the slot is ready; only an atomic
    // exchange or compare-and-exchange (fully ordered in every JIT) keeps
    // that order on arm64. Layout 6 publishes with a compare-and-exchange
    // (the stamp is half of a 64-bit element), which the claim uses too:
    // this finds any, not the publication's own.
    let insns = section(hb_userspace::xdp::OBJECT, "xdp");
    assert!(insns.len() > 100, "the xdp section holds the program");
    let exchanges = insns
        .iter()
        .filter(|&&(op, imm)| op == ATOMIC_DW && (imm == XCHG || imm == CMPXCHG))
        .count();
    assert!(
        exchanges >= 1,
        "no atomic exchange in the program: the new-host publication relies on store order"
    );
}
