#![no_main]
#[global_allocator]
static ALLOC: ferry::fuzzing::CountingAlloc = ferry::fuzzing::CountingAlloc;
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::tej_server_machine(data));
