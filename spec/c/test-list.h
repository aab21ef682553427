/* Every C test: XX(name) for each TEST_IMPL(name). */
#define TEST_LIST(XX)                  \
    XX(rq_priority_then_depth)         \
    XX(rq_fifo_and_lifo)               \
    XX(rq_many_entries_grow)           \
    XX(heap_orders_by_due_then_seq)    \
    XX(heap_remove_middle)             \
    XX(heap_random_against_sort)       \
    XX(graph_chain_depths)             \
    XX(graph_cycle_is_named)           \
    XX(graph_unknown_after)            \
    XX(graph_duplicate_name)           \
    XX(graph_self_and_twice)           \
    XX(graph_map_gather_regions)       \
    XX(graph_gather_without_map)       \
    XX(graph_mixed_regions)            \
    XX(graph_no_tasks)                 \
    XX(sched_chain_runs_in_order)      \
    XX(sched_join_waits_for_both)      \
    XX(sched_fail_attempt_ends_context) \
    XX(sched_timeout_fails_attempt)    \
    XX(sched_retry_waits_for_its_delay) \
    XX(sched_cancel_frees_timers_and_children) \
    XX(sched_slot_reuse_and_stale_handles) \
    XX(sched_deadlock_is_detected)     \
    XX(sched_map_children_and_gather)  \
    XX(sched_router_bypasses)          \
    XX(sched_limiter_holds_attempts)   \
    XX(sched_handles_after_many_reuses) \
    XX(bucket_starts_full)             \
    XX(bucket_window_bound)            \
    XX(bucket_wait_is_exact)           \
    XX(bucket_refill_caps_at_burst)    \
    XX(bucket_small_steps_match_one_big) \
    XX(bucket_long_runs)               \
    XX(bucket_clock_standing_still)
