#![no_std]
// This file exists so that hb-userspace can name hb-ebpf as a build
// dependency: cargo then rebuilds the embedded object when it changes.
