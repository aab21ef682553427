--- The repository stands on its own: no file points at notes outside it
-- (a ../shared directory, or design, style and workload notes by their
-- old names), and every relative link of README.md and docs/*.md leads
-- to a file that exists and, with a #fragment into a Markdown file, to
-- one of its headings. Run from the repository root.
local proc = require "helpers.proc"

local SELF = "spec/e2e/docs_spec.lua"

-- What no file may refer to, as Lua patterns (so that this file does not
-- match itself): the directory next to the checkout, and notes that only
-- ever lived there.
local OUTSIDE = {
    "%.%./shared",
    "%f[%w_]DESIGN%.md",
    "%f[%w_]STYLE%.md",
    "%f[%w_]WORKLOADS%.md",
}


local function lines_of(cmd)
    local h = io.popen(cmd)
    local out = {}
    for line in h:lines() do out[#out + 1] = line end
    local ok = h:close()
    return out, ok
end


-- The files a clone has: tracked ones, and new ones not ignored.
local function repo_files()
    -- (Without the sanitizer runtime `make check` preloads into the specs.)
    local files, ok = lines_of("env -u LD_PRELOAD git ls-files --cached --others --exclude-standard 2>/dev/null")
    if ok and #files > 0 then return files end
    -- Not a git checkout: every file but build output.
    files = lines_of("env -u LD_PRELOAD find . -type f ! -path './.git/*' ! -path './build*' | sed 's|^[.]/||'")
    return files
end


local function exists(path)
    return os.rename(path, path) ~= nil
end


-- Markdown text without fenced code blocks and inline code spans, whose
-- brackets and parentheses are code, not links. Line count is kept.
local function prose(text)
    local out, fenced = {}, false
    for line in (text .. "\n"):gmatch("(.-)\n") do
        if line:match("^%s*```") or line:match("^%s*~~~") then
            fenced = not fenced
            out[#out + 1] = ""
        elseif fenced then
            out[#out + 1] = ""
        else
            out[#out + 1] = (line:gsub("`[^`]*`", "``"))
        end
    end
    return out
end


-- The anchor GitHub makes for a heading: lower case, inline markup and
-- punctuation dropped (letters, digits, '_', '-' and spaces stay), spaces
-- to '-'. Bytes of non-ASCII characters are kept.
local function slug(heading)
    local s = heading:gsub("%[([^%]]*)%]%b()", "%1"):gsub("`", ""):lower()
    s = s:gsub("[^%w_%- \128-\255]", ""):gsub(" ", "-")
    return s
end


-- The anchors of a Markdown file (a second heading with the same anchor
-- gets "-1", a third "-2", as on GitHub).
local function anchors(path)
    local text = assert(proc.slurp(path))
    local set, seen = {}, {}
    local fenced = false
    for line in (text .. "\n"):gmatch("(.-)\n") do
        if line:match("^%s*```") or line:match("^%s*~~~") then
            fenced = not fenced
        elseif not fenced then
            local h = line:match("^#+%s+(.-)%s*#*%s*$")
            if h then
                local a = slug(h)
                if seen[a] then
                    seen[a] = seen[a] + 1
                    a = a .. "-" .. seen[a]
                else
                    seen[a] = 0
                end
                set[a] = true
            end
        end
    end
    return set
end


-- "docs/../README.md" -> "README.md"
local function normalize(path)
    local parts = {}
    for part in path:gmatch("[^/]+") do
        if part == ".." then
            if #parts == 0 or parts[#parts] == ".." then parts[#parts + 1] = ".." else parts[#parts] = nil end
        elseif part ~= "." then
            parts[#parts + 1] = part
        end
    end
    return table.concat(parts, "/")
end


-- The relative links of a Markdown file: { line, target } for inline
-- links, images and reference definitions.
local function links(path)
    local out = {}
    for no, line in ipairs(prose(assert(proc.slurp(path)))) do
        for target in line:gmatch("%]%(%s*<?([^%s%)>]+)>?[^%)]*%)") do
            out[#out + 1] = { line = no, target = target }
        end
        local def = line:match("^%s*%[[^%]]+%]:%s*<?([^%s>]+)")
        if def then out[#out + 1] = { line = no, target = def } end
    end
    local rel = {}
    for _, l in ipairs(out) do
        if not l.target:match("^%a[%w+.-]*:") then rel[#rel + 1] = l end
    end
    return rel
end


local function markdown_pages()
    local pages = { "README.md" }
    for _, f in ipairs(repo_files()) do
        if f:match("^docs/[^/]+%.md$") then pages[#pages + 1] = f end
    end
    table.sort(pages)
    return pages
end


describe("the documentation", function()
    it("refers to nothing outside the repository", function()
        local bad = {}
        for _, f in ipairs(repo_files()) do
            if f ~= SELF then
                local text = proc.slurp(f)
                if text then
                    local no = 0
                    for line in (text .. "\n"):gmatch("(.-)\n") do
                        no = no + 1
                        for _, pat in ipairs(OUTSIDE) do
                            if line:find(pat) then
                                bad[#bad + 1] = f .. ":" .. no .. ": " .. line
                                break
                            end
                        end
                    end
                end
            end
        end
        assert.same({}, bad)
    end)

    it("has relative links that lead to files and headings that exist", function()
        local bad, checked = {}, 0
        local cache = {}
        for _, page in ipairs(markdown_pages()) do
            local dir = page:match("^(.*)/[^/]*$")
            for _, l in ipairs(links(page)) do
                checked = checked + 1
                local file, frag = l.target:match("^([^#]*)#?(.*)$")
                local path = file == "" and page or normalize((dir and dir .. "/" or "") .. file)
                local where = page .. ":" .. l.line .. ": " .. l.target
                if not exists(path) then
                    bad[#bad + 1] = where .. " (no such file)"
                elseif frag ~= "" and path:match("%.md$") then
                    cache[path] = cache[path] or anchors(path)
                    if not cache[path][frag] then bad[#bad + 1] = where .. " (no such heading)" end
                end
            end
        end
        assert.is_true(checked > 20, "only " .. checked .. " links found")
        assert.same({}, bad)
    end)

    it("links every page of docs/ from the README", function()
        local readme = table.concat(prose(assert(proc.slurp("README.md"))), "\n")
        local missing = {}
        for _, page in ipairs(markdown_pages()) do
            if page ~= "README.md" and not readme:find("](" .. page, 1, true) then
                missing[#missing + 1] = page
            end
        end
        assert.same({}, missing)
    end)


    it("would notice a bad link and a reference to ../shared", function()
        local tmp = proc.tmpdir()
        finally(function() proc.rmrf(tmp) end)
        proc.write(tmp .. "/a.md", "# Top\n\n[x](b.md) [y](#top) [z](#nope) [w](gone.md)\n"
                   .. "```\n[not a link](nowhere.md)\n```\nSee `[code](nowhere.md)` and ../"
                   .. "shared/NOTES.md.\n")
        proc.write(tmp .. "/b.md", "## Sub heading: `x.y`\n")
        local found = {}
        for _, l in ipairs(links(tmp .. "/a.md")) do found[#found + 1] = l.target end
        assert.same({ "b.md", "#top", "#nope", "gone.md" }, found)
        assert.is_true(anchors(tmp .. "/a.md").top)
        assert.is_nil(anchors(tmp .. "/a.md").nope)
        assert.is_true(anchors(tmp .. "/b.md")["sub-heading-xy"])
        assert.is_false(exists(tmp .. "/gone.md"))
        assert.is_truthy(proc.slurp(tmp .. "/a.md"):find(OUTSIDE[1]))
        assert.equal("README.md", normalize("docs/../README.md"))
        assert.equal("docs/api.md", normalize("./docs/./api.md"))
    end)
end)
