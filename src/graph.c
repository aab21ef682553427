/* Pipeline compile: names to indices, cycle check, topological order,
 * distance to sink and map/gather regions.
 *
 * DESIGN
 * ------
 * A map task's successors run in child contexts, one per element of the
 * map's output; the tasks they reach until a gather form the map's
 * "region". A task's region is the map that opens it (0 for the root
 * region). Every predecessor of a task must lead into the same region:
 * an edge from a map enters the map's region, an edge into a gather leaves
 * the region of the gather's map. A task's predecessor counter at context
 * start (init_pending) counts only the edges inside its region; the gather
 * counts one, for "all children of its map finished". */
#include <string.h>

#include "internal.h"

typedef struct {
    const char *name;
    uint32_t idx;
} graph_name;

static int graph_name_cmp(const void *a, const void *b) {
    return strcmp(((const graph_name *)a)->name,
                  ((const graph_name *)b)->name);
}

static uint32_t graph_lookup(const graph_name *tab, uint32_t n,
                             const char *name) {
    graph_name key = {name, 0};
    const graph_name *hit = bsearch(&key, tab, n, sizeof(*tab),
                                    graph_name_cmp);
    return hit ? hit->idx : 0;
}

void tide__graph_free(tide__graph *g) {
    if (g == NULL || g->t == NULL)
        return;
    for (uint32_t i = 1; i <= g->n; i++) {
        free(g->t[i].preds);
        free(g->t[i].succs);
        free(g->names[i]);
    }
    free(g->t);
    free(g->names);
    free(g->region_size);
    free(g->roots);
    free(g->roots_off);
    memset(g, 0, sizeof(*g));
}

/* Appends "a -> b -> ... -> a" for a cycle through the unsorted tasks
 * (those with indeg > 0 after Kahn's algorithm) to err. */
static void graph_describe_cycle(const tide__graph *g, const uint32_t *indeg,
                                 char *err, size_t errlen, uint32_t *bad) {
    uint32_t n = g->n, start = 0;
    for (uint32_t i = 1; i <= n && start == 0; i++)
        if (indeg[i] > 0)
            start = i;
    /* Walk predecessors that are themselves unsorted: every unsorted task
     * has one, so after n steps we are inside a cycle. */
    uint32_t cur = start;
    for (uint32_t step = 0; step < n; step++) {
        const tide__gtask *t = &g->t[cur];
        for (uint32_t k = 0; k < t->npreds; k++)
            if (indeg[t->preds[k]] > 0) {
                cur = t->preds[k];
                break;
            }
    }
    /* cur is on a cycle: collect it going backwards, then print forwards. */
    uint32_t *path = tide__xmalloc((n + 1) * sizeof(*path));
    uint32_t len = 0, c = cur;
    do {
        path[len++] = c;
        const tide__gtask *t = &g->t[c];
        for (uint32_t k = 0; k < t->npreds; k++)
            if (indeg[t->preds[k]] > 0) {
                c = t->preds[k];
                break;
            }
    } while (c != cur && len <= n);
    size_t off = (size_t)snprintf(err, errlen, "cycle: ");
    for (uint32_t k = len; k-- > 0 && off < errlen;)
        off += (size_t)snprintf(err + off, errlen - off, "%s -> ",
                                g->names[path[k]]);
    if (off < errlen)
        snprintf(err + off, errlen - off, "%s", g->names[path[len - 1]]);
    *bad = path[len - 1];
    free(path);
}

#define GRAPH_FAIL(idx, ...)                       \
    do {                                           \
        snprintf(err, errlen, __VA_ARGS__);        \
        *bad = (idx);                              \
        goto fail;                                 \
    } while (0)

int tide__graph_compile(const tide__gspec *specs, uint32_t n,
                        tide__graph *g, char *err, size_t errlen,
                        uint32_t *bad) {
    graph_name *tab = NULL;
    uint32_t *indeg = NULL, *order = NULL, *fill = NULL;
    memset(g, 0, sizeof(*g));
    *bad = 0;
    g->n = n;
    g->t = tide__xcalloc(n + 1, sizeof(*g->t));
    g->names = tide__xcalloc(n + 1, sizeof(*g->names));
    if (n == 0)
        GRAPH_FAIL(0, "pipeline has no tasks");

    tab = tide__xmalloc(n * sizeof(*tab));
    for (uint32_t i = 0; i < n; i++) {
        g->names[i + 1] = tide__xstrdup(specs[i].name);
        g->t[i + 1].flags = specs[i].flags;
        tab[i].name = g->names[i + 1];
        tab[i].idx = i + 1;
    }
    qsort(tab, n, sizeof(*tab), graph_name_cmp);
    for (uint32_t i = 1; i < n; i++)
        if (strcmp(tab[i].name, tab[i - 1].name) == 0) {
            uint32_t a = tab[i].idx < tab[i - 1].idx ? tab[i].idx
                                                     : tab[i - 1].idx;
            uint32_t b = tab[i].idx ^ tab[i - 1].idx ^ a;
            GRAPH_FAIL(b, "duplicate task name '%s' (also task #%u)",
                       tab[i].name, a);
        }

    /* Edges. */
    for (uint32_t i = 1; i <= n; i++) {
        const tide__gspec *s = &specs[i - 1];
        tide__gtask *t = &g->t[i];
        t->preds = tide__xmalloc((s->nafter ? s->nafter : 1) *
                                 sizeof(*t->preds));
        for (uint32_t k = 0; k < s->nafter; k++) {
            uint32_t p = graph_lookup(tab, n, s->after[k]);
            if (p == 0)
                GRAPH_FAIL(i, "task '%s': 'after' names unknown task '%s'",
                           g->names[i], s->after[k]);
            if (p == i)
                GRAPH_FAIL(i, "task '%s' lists itself in 'after'",
                           g->names[i]);
            for (uint32_t j = 0; j < t->npreds; j++)
                if (t->preds[j] == p)
                    GRAPH_FAIL(i, "task '%s' lists '%s' twice in 'after'",
                               g->names[i], g->names[p]);
            t->preds[t->npreds++] = p;
            g->t[p].nsuccs++;
        }
    }
    fill = tide__xcalloc(n + 1, sizeof(*fill));
    for (uint32_t i = 1; i <= n; i++)
        g->t[i].succs = tide__xmalloc((g->t[i].nsuccs ? g->t[i].nsuccs : 1) *
                                      sizeof(uint32_t));
    for (uint32_t i = 1; i <= n; i++)
        for (uint32_t k = 0; k < g->t[i].npreds; k++) {
            uint32_t p = g->t[i].preds[k];
            g->t[p].succs[fill[p]++] = i;
        }

    /* Topological order (Kahn); tasks left over are on or behind a cycle. */
    indeg = tide__xcalloc(n + 1, sizeof(*indeg));
    order = tide__xmalloc(n * sizeof(*order));
    uint32_t head = 0, tail = 0;
    for (uint32_t i = 1; i <= n; i++) {
        indeg[i] = g->t[i].npreds;
        if (indeg[i] == 0)
            order[tail++] = i;
    }
    while (head < tail) {
        uint32_t v = order[head++];
        for (uint32_t k = 0; k < g->t[v].nsuccs; k++) {
            uint32_t s = g->t[v].succs[k];
            if (--indeg[s] == 0)
                order[tail++] = s;
        }
    }
    if (tail != n) {
        graph_describe_cycle(g, indeg, err, errlen, bad);
        goto fail;
    }

    /* Distance to a sink, in reverse topological order. */
    for (uint32_t k = n; k-- > 0;) {
        tide__gtask *t = &g->t[order[k]];
        uint32_t d = 0;
        for (uint32_t j = 0; j < t->nsuccs; j++)
            if (g->t[t->succs[j]].depth + 1 > d)
                d = g->t[t->succs[j]].depth + 1;
        t->depth = d;
        if (d > g->maxdepth)
            g->maxdepth = d;
        if (t->nsuccs == 0)
            g->nsinks++;
    }

    /* Regions, in topological order. */
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = order[k];
        tide__gtask *t = &g->t[i];
        uint32_t region = UINT32_MAX, pending = 0;
        if ((t->flags & TIDE__T_GATHER) && t->npreds == 0)
            GRAPH_FAIL(i, "gather task '%s' has no 'after'", g->names[i]);
        for (uint32_t j = 0; j < t->npreds; j++) {
            uint32_t p = t->preds[j];
            const tide__gtask *pt = &g->t[p];
            uint32_t r;
            int inside = 1;
            if (pt->flags & TIDE__T_MAP) {
                r = p; /* entering the map's region */
                inside = 0;
            } else {
                r = pt->region;
            }
            if (t->flags & TIDE__T_GATHER) {
                if (r == 0)
                    GRAPH_FAIL(i, "gather task '%s' is not downstream of a "
                               "map task ('%s' is not inside a map)",
                               g->names[i], g->names[p]);
                if (t->gather_of != 0 && t->gather_of != r)
                    GRAPH_FAIL(i, "gather task '%s' joins the children of "
                               "two different maps ('%s' and '%s')",
                               g->names[i], g->names[t->gather_of],
                               g->names[r]);
                t->gather_of = r;
                r = g->t[r].region; /* leaving the region */
                inside = 0;
            }
            if (region != UINT32_MAX && region != r)
                GRAPH_FAIL(i, "task '%s' mixes inputs from inside and "
                           "outside a map ('%s' is in a different map "
                           "region)", g->names[i], g->names[p]);
            region = r;
            pending += (uint32_t)inside;
        }
        t->region = region == UINT32_MAX ? 0 : region;
        t->init_pending = pending + ((t->flags & TIDE__T_GATHER) ? 1 : 0);
    }

    /* Region sizes and per-region root lists. */
    g->region_size = tide__xcalloc(n + 1, sizeof(*g->region_size));
    g->roots_off = tide__xcalloc(n + 2, sizeof(*g->roots_off));
    for (uint32_t i = 1; i <= n; i++) {
        g->region_size[g->t[i].region]++;
        if (g->t[i].init_pending == 0)
            g->roots_off[g->t[i].region + 1]++;
    }
    for (uint32_t r = 1; r <= n + 1; r++)
        g->roots_off[r] += g->roots_off[r - 1];
    g->roots = tide__xmalloc((g->roots_off[n + 1] + 1) * sizeof(*g->roots));
    memset(fill, 0, (n + 1) * sizeof(*fill));
    for (uint32_t i = 1; i <= n; i++)
        if (g->t[i].init_pending == 0) {
            uint32_t r = g->t[i].region;
            g->roots[g->roots_off[r] + fill[r]++] = i;
        }
    free(tab);
    free(indeg);
    free(order);
    free(fill);
    return 0;

fail:
    free(tab);
    free(indeg);
    free(order);
    free(fill);
    tide__graph_free(g);
    return TIDE_EPIPELINE;
}
