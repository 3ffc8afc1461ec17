/*
 * fuzz_config.c - libFuzzer target for the config parser: config_parse_string()
 * on the input, and config_parse_url() on each of its lines.
 *
 * Layer: tests of src/. Build (clang):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Iproto -Isrc \
 *     tests/fuzz/fuzz_config.c src/config.c proto/tbuf.c proto/err.c -linih \
 *     -o /tmp/fuzz_config
 * Seed corpus: tests/fuzz/corpus/config/.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern.h"

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config_parse_string() takes a C string: the input up to its first NUL. */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    struct tern_config *cfg = NULL;
    char *msg = NULL;
    enum tern_status st = config_parse_string(text, "fuzz.conf", &cfg, &msg);
    if (st == TERN_OK) {
        /* A parsed config is complete: every account has a name and a cache_dir. */
        if (!cfg || msg || !cfg->accounts)
            abort();
        for (const struct tern_account *a = cfg->accounts; a; a = a->next) {
            if (!a->name || !a->cache_dir || (!a->imap && !a->pop3 && !a->smtp))
                abort();
            if (config_account(cfg, a->name) != a)
                abort();
        }
    } else if (cfg || (st == TERN_E_CONFIG && (!msg || strncmp(msg, "fuzz.conf", 9) != 0))) {
        abort();
    }
    tern_config_free(cfg);
    free(msg);

    /* Every line as a URL as well. */
    char *line = text;
    while (line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        struct tern_url *url = NULL;
        char *why = NULL;
        st = config_parse_url(line, &url, &why);
        if (st == TERN_OK && (!url || !url->host || url->port < 1 || url->port > 65535))
            abort();
        if (st != TERN_OK && url)
            abort();
        config_url_free(url);
        free(why);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return 0;
}
