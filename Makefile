# tide: build, test, check, bench. One build directory per configuration.
#   make            release build into build/
#   make test       C unit tests, busted specs, end-to-end specs
#   make check      the same rebuilt with ASan+UBSan and -Werror, plus lint
#   make bench      W1-W3, W5 against the plain-LuaJIT floor (never in CI)
#   make soak       tide serve under mixed load, RSS and fds watched (never in CI)
#   make fuzz       the libFuzzer targets, FUZZ_SECONDS each (clang)
#   make valgrind   the C hosts and the engine specs under valgrind

BUILD ?= build
SAN ?=
PKGS = luajit libuv yajl sqlite3 libxxhash hiredis
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS)) -lhttp_parser
WARN = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
OPT ?= -O2 -g
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE -fPIC $(OPT) $(WARN) $(EXTRA_CFLAGS) \
	$(PKG_CFLAGS) -MMD -MP
LDLIBS_ALL = $(PKG_LIBS) -lm -ldl -lpthread $(EXTRA_LDFLAGS)
LUAJIT ?= luajit

CORE_SRC = $(wildcard src/*.c)
CORE_SRC := $(filter-out src/main.c,$(CORE_SRC))
GLUE_SRC = $(filter-out src/lua/lbundle.c src/lua/ledit.c,$(wildcard src/lua/*.c))
LUA_SRC = $(wildcard lua/tide/*.lua)

OBJ = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(CORE_SRC) $(GLUE_SRC))
LUA_BC = $(patsubst lua/tide/%.lua,$(BUILD)/obj/bc/tide_%.h,$(LUA_SRC))
TEST_SRC = $(filter-out spec/c/embed-test.c spec/c/embed-free-sync.c,$(wildcard spec/c/*.c))

.PHONY: all test check check-build lint bench soak fuzz fuzz-targets valgrind \
	clean test-c test-lua test-e2e \
	install install-lua

all: $(BUILD)/tide $(BUILD)/lib/tide/core.so $(BUILD)/test-runner \
	examples/native/libdedup.so \
	$(BUILD)/libtide.a $(BUILD)/libtide.so $(BUILD)/examples/embed-host \
	$(BUILD)/examples/poll-host $(BUILD)/embed-test $(BUILD)/embed-free-sync

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# Lua modules are bundled as bytecode with debug info (-g) so tracebacks
# keep their line numbers.
$(BUILD)/obj/bc/tide_%.h: lua/tide/%.lua
	@mkdir -p $(dir $@)
	$(LUAJIT) -b -g -n tide.$* $< $@

$(BUILD)/obj/bundle.c: $(LUA_SRC) scripts/gen-bundle.sh
	@mkdir -p $(dir $@)
	sh scripts/gen-bundle.sh $(LUA_SRC) > $@

$(BUILD)/obj/bundle.o: $(BUILD)/obj/bundle.c $(LUA_BC)
	$(CC) $(CFLAGS_ALL) -Isrc -Isrc/lua -I$(BUILD)/obj/bc -c $< -o $@

# Line editing (libedit, BSD) is linked into the CLI only.
EDIT_CFLAGS := $(shell pkg-config --cflags libedit)
EDIT_LIBS := $(shell pkg-config --libs libedit)

$(BUILD)/obj/lua/ledit.o: src/lua/ledit.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(EDIT_CFLAGS) -c $< -o $@

$(BUILD)/tide: $(BUILD)/obj/main.o $(OBJ) $(BUILD)/obj/lua/ledit.o $(BUILD)/obj/bundle.o
	$(CC) $(OPT) $(EXTRA_CFLAGS) -Wl,-E -o $@ $^ $(LDLIBS_ALL) $(EDIT_LIBS)

# The embedding libraries: the engine, the glue and the bundled Lua
# modules, for C hosts that include src/tide.h.
$(BUILD)/libtide.a: $(OBJ) $(BUILD)/obj/bundle.o
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/libtide.so: $(OBJ) $(BUILD)/obj/bundle.o
	$(CC) $(OPT) $(EXTRA_CFLAGS) -shared -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/examples/embed-host: examples/embed/host.c $(BUILD)/libtide.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc -o $@ $< $(BUILD)/libtide.a $(LDLIBS_ALL)

$(BUILD)/examples/poll-host: examples/embed/poll-host.c $(BUILD)/libtide.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc -o $@ $< $(BUILD)/libtide.a $(LDLIBS_ALL)

# The native task example, built next to its pipeline (it links nothing
# of tide: the header's inline wrappers call through the tide_call).
examples/native/libdedup.so: examples/native/dedup.c src/tide.h
	$(CC) $(CFLAGS_ALL) -Isrc -shared -o $@ $<

$(BUILD)/embed-test: spec/c/embed-test.c $(BUILD)/libtide.a
	$(CC) $(CFLAGS_ALL) -Isrc -o $@ $< $(BUILD)/libtide.a $(LDLIBS_ALL)

$(BUILD)/embed-free-sync: spec/c/embed-free-sync.c $(BUILD)/libtide.a
	$(CC) $(CFLAGS_ALL) -Isrc -o $@ $< $(BUILD)/libtide.a $(LDLIBS_ALL)

# The Lua module needs neither the C API nor the bundled modules.
$(BUILD)/lib/tide/core.so: $(filter-out $(BUILD)/obj/lua/lapi.o,$(OBJ))
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(EXTRA_CFLAGS) -shared -o $@ $^ $(PKG_LIBS) -lm -ldl -lpthread

$(BUILD)/test-runner: $(TEST_SRC) $(filter-out $(BUILD)/obj/lua/%,$(OBJ))
	$(CC) $(CFLAGS_ALL) -Isrc -o $@ $(filter %.c %.o,$^) $(LDLIBS_ALL)

BUSTED = busted --lua=$(LUAJIT) -o TAP --helper=spec/helpers/init.lua

test-c: all
	$(BUILD)/test-runner
	$(BUILD)/embed-test

test-lua: all
	TIDE_BUILD=$(BUILD) $(SAN_ENV) $(BUSTED) spec/

test-e2e: all
	TIDE_BUILD=$(BUILD) $(SAN_ENV) $(BUSTED) spec/e2e/

test: test-c test-lua
	@echo "make test: all suites passed"

ASAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
ASAN_ENV = LD_PRELOAD=$$($(CC) -print-file-name=libasan.so):$$($(CC) -print-file-name=libubsan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1

ifeq ($(SAN),thread)
CHECK_BUILD = build-tsan
CHECK_FLAGS = -fsanitize=thread
CHECK_ENV = LD_PRELOAD=$$($(CC) -print-file-name=libtsan.so)
else
CHECK_BUILD = build-asan
CHECK_FLAGS = $(ASAN_FLAGS)
CHECK_ENV = $(ASAN_ENV)
endif

ifeq ($(SAN),thread)
# ThreadSanitizer: the worker pool, the loop and the watchdog specs, with busted run by
# luajit itself (its lua5.x launcher does not survive the preload). The
# exec specs stay out: their subprocesses would inherit the preload.
check: lint
	$(MAKE) BUILD=$(CHECK_BUILD) OPT="-O1 -g" \
		EXTRA_CFLAGS="$(CHECK_FLAGS) -Werror" all
	$(CHECK_BUILD)/test-runner
	$(CHECK_BUILD)/embed-test
	@# Engines freed while their sync jobs run: the worker threads drop
	@# the jobs' last references (an atomic count shared with the loop).
	TSAN_OPTIONS=halt_on_error=1 $(CHECK_BUILD)/embed-free-sync 2
	TIDE_BUILD=$(CHECK_BUILD) $(CHECK_ENV) TSAN_OPTIONS=halt_on_error=1 \
		$(LUAJIT) $$(command -v busted) -o TAP --helper=spec/helpers/init.lua \
		spec/sync_spec.lua spec/executor_spec.lua \
		spec/embed_spec.lua spec/flow_spec.lua spec/batch_spec.lua \
		spec/watchdog_spec.lua spec/serve_feed_spec.lua
else
check: lint
	$(MAKE) BUILD=$(CHECK_BUILD) OPT="-O1 -g" \
		EXTRA_CFLAGS="$(CHECK_FLAGS) -Werror" all
	$(CHECK_BUILD)/test-runner
	ASAN_OPTIONS=detect_leaks=1 $(CHECK_BUILD)/embed-test
	TIDE_BUILD=$(CHECK_BUILD) TIDE_SAN_FLAGS="$(CHECK_FLAGS)" $(CHECK_ENV) $(BUSTED) spec/
	@# The collector runs all the time for the in-process specs only: the
	@# e2e specs' tide processes would inherit it and take an hour.
	TIDE_GC_STRESS=1 TIDE_BUILD=$(CHECK_BUILD) TIDE_SAN_FLAGS="$(CHECK_FLAGS)" $(CHECK_ENV) $(BUSTED) \
		$(wildcard spec/*_spec.lua)
	@# The C host is built with the sanitizer itself: leaks are errors there.
	ASAN_OPTIONS=detect_leaks=1 $(CHECK_BUILD)/examples/embed-host \
		examples/embed/wordcount.lua '"a b a"' '"x"' >/dev/null
	echo '"a b a"' | ASAN_OPTIONS=detect_leaks=1 $(CHECK_BUILD)/examples/poll-host \
		examples/embed/wordcount.lua >/dev/null
	ASAN_OPTIONS=detect_leaks=1 $(CHECK_BUILD)/embed-free-sync 2 >/dev/null
endif

lint:
	sh scripts/check-layering.sh
	sh scripts/check-private.sh
	luacheck -q lua spec bench $(wildcard examples)

bench: all
	sh scripts/bench.sh

# make fuzz FUZZ_SECONDS=N: the libFuzzer targets of spec/fuzz/ (the JSON
# codec, the HTTP layer, the marshal decoder), built with Debian's clang,
# ASan and UBSan into build-fuzz/, each run for N seconds from its seed
# corpus spec/fuzz/corpus/<target>/.
FUZZ_BUILD = build-fuzz
FUZZ_TARGETS = json http marshal
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -fsanitize=fuzzer-no-link

fuzz:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang OPT="-O1 -g" \
		EXTRA_CFLAGS="$(FUZZ_CFLAGS)" fuzz-targets
	sh scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-targets: $(patsubst %,$(BUILD)/fuzz/fuzz_%,$(FUZZ_TARGETS))

$(BUILD)/fuzz/fuzz_%: spec/fuzz/fuzz_%.c $(OBJ) $(BUILD)/obj/bundle.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer -Isrc/lua -o $@ $< $(OBJ) \
		$(BUILD)/obj/bundle.o $(LDLIBS_ALL)

# make valgrind: the C hosts (the embedding example and embed-test) and
# the engine specs under valgrind's memcheck, in the release build. Errors
# and definite leaks fail; scripts/valgrind.supp suppresses what belongs to
# LuaJIT itself and nothing of tide's. Specs that measure time (#timing)
# are left out: valgrind runs code some 20 times slower.
VALGRIND = timeout 1800 valgrind -q --error-exitcode=99 --leak-check=full \
	--show-leak-kinds=definite --errors-for-leak-kinds=definite \
	--suppressions=scripts/valgrind.supp
VALGRIND_SPECS = spec/executor_spec.lua spec/sync_spec.lua spec/batch_spec.lua \
	spec/flow_spec.lua spec/json_spec.lua spec/marshal_spec.lua \
	spec/native_spec.lua spec/embed_spec.lua spec/serve_feed_spec.lua

valgrind: all
	$(VALGRIND) $(BUILD)/embed-test
	$(VALGRIND) $(BUILD)/examples/embed-host examples/embed/wordcount.lua \
		'"a b a"' '"x"' >/dev/null
	TIDE_BUILD=$(BUILD) $(VALGRIND) $(LUAJIT) $$(command -v busted) -o TAP \
		--helper=spec/helpers/init.lua --exclude-tags=timing $(VALGRIND_SPECS)
	@# The C hosts of the embed spec (poll-host waiting on tide_engine_fd,
	@# an engine freed while its sync job runs), each under valgrind.
	TIDE_VALGRIND=1 TIDE_BUILD=$(BUILD) $(BUSTED) spec/e2e/embed_spec.lua

# make soak MINUTES=N: tide serve under a steady mixed load for N minutes
# (default 10); fails when RSS or open fds grow after the warm-up. Loopback
# only; never in CI.
MINUTES ?= 10
soak: all
	BUILD=$(BUILD) MINUTES=$(MINUTES) LUAJIT=$(LUAJIT) sh scripts/soak.sh

# make install PREFIX=... DESTDIR=...: the binary, the libraries, the
# header and the Lua module (core.so under LIBDIR, the .lua files under
# LUADIR, the layout a stock luajit searches).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include
LUADIR ?= $(PREFIX)/share/lua/5.1
CMODDIR ?= $(PREFIX)/lib/lua/5.1

PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig

install: all install-lua
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR) \
		$(DESTDIR)$(PKGCONFIGDIR)
	install -m 755 $(BUILD)/tide $(DESTDIR)$(BINDIR)/tide
	install -m 644 $(BUILD)/libtide.a $(DESTDIR)$(LIBDIR)/libtide.a
	install -m 755 $(BUILD)/libtide.so $(DESTDIR)$(LIBDIR)/libtide.so
	install -m 644 src/tide.h $(DESTDIR)$(INCDIR)/tide.h
	@# pkg-config's file, with the directories of this install.
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCDIR@|$(INCDIR)|g' \
		-e 's|@VERSION@|$(shell sed -n 's/^#define TIDE_VERSION_STRING "\(.*\)"/\1/p' src/tide.h)|g' \
		tide.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/tide.pc

# The Lua module alone (what the rockspec installs). tide.lua is the
# module's entry for package paths that have no ?/init.lua entry.
install-lua: $(BUILD)/lib/tide/core.so
	install -d $(DESTDIR)$(CMODDIR)/tide $(DESTDIR)$(LUADIR)/tide
	install -m 755 $(BUILD)/lib/tide/core.so $(DESTDIR)$(CMODDIR)/tide/core.so
	install -m 644 $(LUA_SRC) $(DESTDIR)$(LUADIR)/tide/
	install -m 644 lua/tide.lua $(DESTDIR)$(LUADIR)/tide.lua

clean:
	rm -rf build build-asan build-tsan build-debug build-fuzz examples/native/libdedup.so

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
