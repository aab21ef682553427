/* Line editing for `tide repl`: libedit's readline interface in callback
 * mode, bound to Lua as tide.editline. Linked into the tide binary only,
 * never into libtide or core.so (docs/architecture.md): libedit is a
 * dependency of the command line, not of programs that embed tide.
 *
 * The REPL owns its loop: it polls fd 0 and calls read_char() when fd 0 is
 * readable; read_char returns a line once the user finished one. Output
 * printed while the user types goes through print_above, which clears the
 * prompt line, prints, and redraws the prompt with what was typed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>

#include "lglue.h"

static char *ledit_line;      /* the line the callback received */
static int ledit_have_line;   /* 1: a line (or EOF when ledit_line NULL) */
static int ledit_installed;
static int ledit_dirty;       /* keys were typed since the last line */

/* libedit installs its own SIGINT handler (which re-raises with the
 * default action) whenever it sets the terminal up, even with
 * rl_catch_signals off: put the REPL's back after every call into it. */
static void ledit_own_sigint(void) {
    if (tide__lua_sigint_install() != 0)
        perror("tide: sigaction");
}

static void ledit_cb(char *line) {
    free(ledit_line);
    ledit_line = line; /* NULL on end of input */
    ledit_have_line = 1;
}

/* install(prompt): starts reading lines in callback mode. */
static int l_install(lua_State *L) {
    const char *prompt = luaL_checkstring(L, 1);
    /* The REPL handles SIGINT itself (a flag its loop reads). */
    rl_catch_signals = 0;
    rl_callback_handler_install(prompt, ledit_cb);
    ledit_installed = 1;
    ledit_own_sigint();
    return 0;
}

/* read_char() -> line | false (not finished) | nil (end of input). Call
 * when fd 0 is readable. */
static int l_read_char(lua_State *L) {
    if (!ledit_installed)
        return luaL_error(L, "editline: not installed");
    ledit_have_line = 0;
    rl_callback_read_char();
    ledit_own_sigint();
    ledit_dirty = !ledit_have_line;
    if (!ledit_have_line) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (ledit_line == NULL)
        return 0;
    lua_pushstring(L, ledit_line);
    free(ledit_line);
    ledit_line = NULL;
    return 1;
}

static int l_set_prompt(lua_State *L) {
    const char *prompt = luaL_checkstring(L, 1);
    /* Reinstalling is the portable way to change libedit's prompt in
     * callback mode. */
    rl_callback_handler_remove();
    rl_callback_handler_install(prompt, ledit_cb);
    ledit_own_sigint();
    return 0;
}

/* print_above(text): prints text on its own lines above the prompt and
 * redraws the prompt and the line being typed. */
static int l_print_above(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    fputs("\r\033[K", stdout);
    fwrite(text, 1, len, stdout);
    if (len == 0 || text[len - 1] != '\n')
        fputc('\n', stdout);
    fflush(stdout);
    if (ledit_installed)
        rl_forced_update_display();
    return 0;
}

/* clear_line(prompt): drops what was typed (Ctrl-C) and shows prompt. */
static int l_clear_line(lua_State *L) {
    const char *prompt = luaL_checkstring(L, 1);
    /* Drop the typed text: libedit keeps it across a handler reinstall
     * unless the line is replaced first. */
    rl_replace_line("", 0);
    rl_point = rl_end = 0;
    ledit_dirty = 0;
    fputs("^C\n", stdout);
    fflush(stdout);
    if (ledit_installed) {
        rl_callback_handler_remove();
        rl_callback_handler_install(prompt, ledit_cb);
        ledit_own_sigint();
    }
    return 0;
}

/* typed() -> whether the line being edited has text. libedit leaves the
 * last accepted line in rl_line_buffer, so this tracks it from the
 * callback: a finished line resets it. */
static int l_typed(lua_State *L) {
    lua_pushboolean(L, ledit_dirty && rl_end > 0);
    return 1;
}

static int l_add_history(lua_State *L) {
    add_history(luaL_checkstring(L, 1));
    return 0;
}

static int l_read_history(lua_State *L) {
    lua_pushboolean(L, read_history(luaL_checkstring(L, 1)) == 0);
    return 1;
}

static int l_write_history(lua_State *L) {
    lua_pushboolean(L, write_history(luaL_checkstring(L, 1)) == 0);
    return 1;
}

/* remove(): restores the terminal. */
static int l_remove(lua_State *L) {
    TIDE_UNUSED(L);
    if (ledit_installed)
        rl_callback_handler_remove();
    ledit_installed = 0;
    free(ledit_line);
    ledit_line = NULL;
    return 0;
}

int luaopen_tide_editline(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"install", l_install},         {"read_char", l_read_char},
        {"set_prompt", l_set_prompt},   {"print_above", l_print_above},
        {"clear_line", l_clear_line},   {"typed", l_typed},
        {"add_history", l_add_history}, {"read_history", l_read_history},
        {"write_history", l_write_history},
        {"remove", l_remove},           {NULL, NULL}};
    lua_newtable(L);
    luaL_setfuncs(L, funcs, 0);
    return 1;
}
