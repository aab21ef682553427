/* Every C test: TEST_ENTRY(name) for each TEST_IMPL(name). */
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
    XX(utf8_check_and_repair_table)    \
    XX(utf8_bad_lengths)               \
    XX(utf8_repair_exhaustive_short)   \
    XX(utf8_put_encodes_scalars)
