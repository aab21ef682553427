/* Tests of pipeline compile (src/graph.c). */
#include "../../src/internal.h"
#include "task.h"

static int compile(const tide__gspec *s, uint32_t n, tide__graph *g,
                   char *err, uint32_t *bad) {
    return tide__graph_compile(s, n, g, err, 256, bad);
}

TEST_IMPL(graph_chain_depths) {
    const char *a0[] = {"t0"}, *a1[] = {"t1"}, *a2[] = {"t2"};
    tide__gspec s[] = {{"t3", a2, 1, 0}, {"t0", NULL, 0, 0},
                       {"t1", a0, 1, 0}, {"t2", a1, 1, 0}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_OK(compile(s, 4, &g, err, &bad));
    ASSERT_EQ(g.t[2].depth, 3); /* t0: declared second, "after" may name later tasks */
    ASSERT_EQ(g.t[1].depth, 0);
    ASSERT_EQ(g.nsinks, 1);
    ASSERT_EQ(g.region_size[0], 4);
    ASSERT_EQ(g.roots_off[1] - g.roots_off[0], 1);
    ASSERT_EQ(g.roots[g.roots_off[0]], 2);
    ASSERT_EQ(g.t[3].init_pending, 1);
    tide__graph_free(&g);
    return 0;
}

TEST_IMPL(graph_cycle_is_named) {
    const char *aa[] = {"c"}, *ab[] = {"a"}, *ac[] = {"b"}, *ad[] = {"a"};
    tide__gspec s[] = {{"a", aa, 1, 0}, {"b", ab, 1, 0}, {"c", ac, 1, 0},
                       {"d", ad, 1, 0}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(s, 4, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "cycle: ");
    ASSERT_STR_CONTAINS(err, "a -> b -> c -> a");
    ASSERT(bad >= 1 && bad <= 3);
    return 0;
}

TEST_IMPL(graph_unknown_after) {
    const char *ab[] = {"nope"};
    tide__gspec s[] = {{"a", NULL, 0, 0}, {"b", ab, 1, 0}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(s, 2, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "task 'b': 'after' names unknown task 'nope'");
    ASSERT_EQ(bad, 2);
    return 0;
}

TEST_IMPL(graph_duplicate_name) {
    tide__gspec s[] = {{"a", NULL, 0, 0}, {"b", NULL, 0, 0}, {"a", NULL, 0, 0}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(s, 3, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "duplicate task name 'a' (also task #1)");
    ASSERT_EQ(bad, 3);
    return 0;
}

TEST_IMPL(graph_self_and_twice) {
    const char *self[] = {"a"}, *twice[] = {"a", "a"};
    tide__gspec s1[] = {{"a", self, 1, 0}};
    tide__gspec s2[] = {{"a", NULL, 0, 0}, {"b", twice, 2, 0}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(s1, 1, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "lists itself");
    ASSERT_EQ(compile(s2, 2, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "lists 'a' twice");
    return 0;
}

TEST_IMPL(graph_map_gather_regions) {
    /* split(map) -> inc -> m2(map) -> sq -> g2(gather) -> g1(gather) */
    const char *a_inc[] = {"split"}, *a_m2[] = {"inc"}, *a_sq[] = {"m2"},
               *a_g2[] = {"sq"}, *a_g1[] = {"g2"};
    tide__gspec s[] = {{"split", NULL, 0, TIDE__T_MAP},
                       {"inc", a_inc, 1, 0},
                       {"m2", a_m2, 1, TIDE__T_MAP},
                       {"sq", a_sq, 1, 0},
                       {"g2", a_g2, 1, TIDE__T_GATHER},
                       {"g1", a_g1, 1, TIDE__T_GATHER}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_OK(compile(s, 6, &g, err, &bad));
    ASSERT_EQ(g.t[1].region, 0);
    ASSERT_EQ(g.t[2].region, 1);
    ASSERT_EQ(g.t[3].region, 1);
    ASSERT_EQ(g.t[4].region, 3);
    ASSERT_EQ(g.t[5].region, 1);
    ASSERT_EQ(g.t[5].gather_of, 3);
    ASSERT_EQ(g.t[6].region, 0);
    ASSERT_EQ(g.t[6].gather_of, 1);
    ASSERT_EQ(g.t[2].init_pending, 0); /* a root of split's children */
    ASSERT_EQ(g.t[6].init_pending, 1); /* waits for the children only */
    ASSERT_EQ(g.region_size[0], 2);
    ASSERT_EQ(g.region_size[1], 3);
    ASSERT_EQ(g.region_size[3], 1);
    tide__graph_free(&g);
    return 0;
}

TEST_IMPL(graph_gather_without_map) {
    const char *a[] = {"a"};
    tide__gspec s[] = {{"a", NULL, 0, 0}, {"g", a, 1, TIDE__T_GATHER}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(s, 2, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "gather task 'g' is not downstream of a map");
    ASSERT_EQ(bad, 2);
    return 0;
}

TEST_IMPL(graph_mixed_regions) {
    const char *a_in[] = {"m"}, *a_j[] = {"in", "x"};
    tide__gspec s[] = {{"m", NULL, 0, TIDE__T_MAP}, {"x", NULL, 0, 0},
                       {"in", a_in, 1, 0}, {"j", a_j, 2, 0}};
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(s, 4, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "task 'j' mixes inputs");
    ASSERT_EQ(bad, 4);
    return 0;
}

TEST_IMPL(graph_no_tasks) {
    tide__graph g;
    char err[256];
    uint32_t bad;
    ASSERT_EQ(compile(NULL, 0, &g, err, &bad), TIDE_EPIPELINE);
    ASSERT_STR_CONTAINS(err, "no tasks");
    return 0;
}
