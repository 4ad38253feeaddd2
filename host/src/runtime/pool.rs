//! Instances for `serve` from a pool reserved up front, rather than mapped
//! and unmapped one by one.
//!
//! Why: an instance created afresh maps its linear memory and unmaps it when
//! dropped. With the process's threads on both cores, each unmapping (and
//! each first write to a page of the memory image, copied on write) flushes
//! the other core's TLB by interrupt. For thousands of short workflows a
//! second that was the largest single cost of `serve`: a quarter of its CPU
//! in a profile, and single-step workflows ran ~1.6x faster pooled. A pooled
//! slot stays mapped: when its instance is dropped, only the pages the guest
//! wrote (found with the kernel's `PAGEMAP_SCAN` where it has one) are reset
//! in place from the image, and the next instance of the same component
//! finds its memory ready.
//!
//! The pool holds each run's own instance, one slot per run a server may
//! hold at once, every slot able to grow to the 4 GiB an unpooled memory
//! may (address space, not RAM): it cannot run out. Parallel branches,
//! rarer and up to 16 per run, are mapped one by one: pooled, the slots a
//! burst of them used would keep their resident pages after it.
//!
//! What stays resident is bounded: at most [`KEEP_RESIDENT`] per slot, only
//! pages a guest wrote, and only in the slots in use at one time (a slot
//! that held the component before is taken first).
//!
//! Where the pool cannot be reserved (an address-space limit, a very large
//! `--concurrency`), or a component does not fit its slots, instances are
//! mapped one by one, as `run` does: slower, never refused.

use wasmtime::{Enabled, PoolingAllocationConfig};

/// Bytes of each memory slot reset in place, and kept resident, when its
/// instance is dropped; beyond that, pages are given back to the system.
/// A single-step Rust workflow writes less: 256 KiB, 1, 2 and 4 MiB ran
/// alike. Where the kernel cannot tell written pages apart, all of it is
/// reset, so it stays small.
const KEEP_RESIDENT: usize = 512 << 10;

/// Memories, tables and core instances one component may hold in a slot,
/// and the entries a table may grow to (wasmtime's default is 20,000). A
/// component with more runs unpooled.
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 8;
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const TABLE_ELEMENTS: usize = 100_000;

/// A pool for the instances of `runs` runs at once; `None` when that is
/// more than can be counted.
pub(super) fn config(runs: usize) -> Option<PoolingAllocationConfig> {
    let instances = u32::try_from(runs).ok()?;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(instances.checked_mul(CORE_INSTANCES_PER_COMPONENT)?)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(instances.checked_mul(MEMORIES_PER_COMPONENT)?)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_tables(instances.checked_mul(TABLES_PER_COMPONENT)?)
        // Only async calls use stacks of their own; workflows run on threads.
        .total_stacks(0)
        .max_memory_size(1 << 32)
        .table_elements(TABLE_ELEMENTS)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto)
        // Reuse the slots already in use before warming others: what stays
        // resident is what the busiest moment needed, no more.
        .max_unused_warm_slots(0);
    Some(pool)
}

#[cfg(test)]
mod tests {
    use wasmtime::component::Component;
    use wasmtime::{Config, Engine, InstanceAllocationStrategy};

    use super::*;

    fn pooled_engine(runs: usize) -> Engine {
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            super::config(runs).unwrap(),
        ));
        Engine::new(&config).unwrap()
    }

    /// A component of `modules` core modules, each with a memory of its own.
    fn with_memories(modules: usize) -> Vec<u8> {
        let body: String = (0..modules)
            .map(|n| format!("(core module $m{n} (memory 1)) (core instance (instantiate $m{n}))"))
            .collect();
        wat::parse_str(format!("(component {body})")).unwrap()
    }

    #[test]
    fn a_pool_holds_an_instance_for_each_of_its_runs() {
        let runs = 5;
        let engine = pooled_engine(runs);
        let component =
            Component::new(&engine, with_memories(MEMORIES_PER_COMPONENT as usize)).unwrap();
        let linker = wasmtime::component::Linker::<()>::new(&engine);
        let stores: Vec<_> = (0..runs)
            .map(|_| {
                let mut store = wasmtime::Store::new(&engine, ());
                linker.instantiate(&mut store, &component).unwrap();
                store
            })
            .collect();
        drop(stores);
        // Slots given back are taken again.
        let mut store = wasmtime::Store::new(&engine, ());
        linker.instantiate(&mut store, &component).unwrap();
    }

    #[test]
    fn a_component_the_slots_cannot_hold_is_refused_when_loaded() {
        let engine = pooled_engine(1);
        let fits = MEMORIES_PER_COMPONENT as usize;
        assert!(Component::new(&engine, with_memories(fits)).is_ok());
        let error = Component::new(&engine, with_memories(fits + 1)).unwrap_err();
        assert!(
            format!("{error:#}").contains("pooling allocator"),
            "{error:#}"
        );
    }

    #[test]
    fn a_slot_given_back_holds_nothing_of_the_instance_before() {
        let engine = pooled_engine(1);
        let wat = wat::parse_str(
            r#"(module
                (memory (export "memory") 2)
                (data (i32.const 16) "image")
                (func (export "write") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
                (func (export "read") (param i32) (result i32) (i32.load8_u (local.get 0)))
                (func (export "grow") (result i32) (memory.grow (i32.const 3))))"#,
        )
        .unwrap();
        let module = wasmtime::Module::new(&engine, wat).unwrap();
        let instance = |store: &mut wasmtime::Store<()>| {
            wasmtime::Instance::new(&mut *store, &module, &[]).unwrap()
        };
        let written = [16, 20, 70_000, 200_000];
        for round in 0..3 {
            let mut store = wasmtime::Store::new(&engine, ());
            let instance = instance(&mut store);
            let read = instance
                .get_typed_func::<i32, i32>(&mut store, "read")
                .unwrap();
            let memory = instance.get_memory(&mut store, "memory").unwrap();
            assert_eq!(
                memory.size(&store),
                2,
                "round {round}: the memory's first size"
            );
            assert_eq!(read.call(&mut store, 16).unwrap(), i32::from(b'i'));
            assert_eq!(read.call(&mut store, 20).unwrap(), i32::from(b'e'));
            assert_eq!(read.call(&mut store, 70_000).unwrap(), 0);
            // What this instance writes, the next one must not see.
            let grow = instance
                .get_typed_func::<(), i32>(&mut store, "grow")
                .unwrap();
            assert_eq!(grow.call(&mut store, ()).unwrap(), 2);
            let write = instance
                .get_typed_func::<(i32, i32), ()>(&mut store, "write")
                .unwrap();
            for address in written {
                write.call(&mut store, (address, 0x5a)).unwrap();
            }
            assert_eq!(read.call(&mut store, 200_000).unwrap(), 0x5a);
        }
    }

    #[test]
    fn no_pool_for_more_instances_than_can_be_counted() {
        assert!(super::config(usize::MAX).is_none());
        assert!(super::config(u32::MAX as usize).is_none());
    }
}
