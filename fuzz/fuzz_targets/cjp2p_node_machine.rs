#![no_main]
#[global_allocator]
static ALLOC: ferry::fuzzing::CountingAlloc = ferry::fuzzing::CountingAlloc;
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::cjp2p_node_machine(data));
