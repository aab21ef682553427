/* A native task: the deduplication key of a record, computed in C.
 *
 * The key is the 64-bit FNV-1a hash of the record's canonical JSON (tide
 * writes object keys sorted, so equal records give equal text). Built by
 * make as examples/native/libdedup.so; run by examples/native/dedup.lua.
 *
 * It links no tide symbol: everything goes through the tide_call. */
#include <stdio.h>
#include <string.h>

#include "tide.h"

TIDE_EXPORT_ABI;

int dedup_key(tide_call *c);

int dedup_key(tide_call *c) {
    size_t n;
    const char *json = tide_call_input_json(c, &n);
    if (json == NULL)
        return tide_call_error(c, "the record cannot be written as JSON");
    if (n > 1 << 20)
        return tide_call_error(c, "record larger than 1 MiB");
    if (n == 2 && memcmp(json, "{}", 2) == 0)
        return tide_call_error(c, "empty record");
    unsigned long long h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)json[i];
        h *= 1099511628211ULL;
    }
    char out[96];
    int len = snprintf(out, sizeof(out), "{\"key\":\"%016llx\",\"bytes\":%zu}",
                       h, n);
    return tide_call_output_json(c, out, (size_t)len);
}
