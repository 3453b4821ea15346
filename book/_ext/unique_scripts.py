"""Each inline ``<script>`` once per page.

Sphinx 7.4 lists a body-only script twice when an extension adds it after the builder has started
(sphinx-thebe and sphinx-togglebutton do): once as ``filename=None``, once as ``filename=''``, which
compare unequal. The second ``const THEBE_JS_URL`` then stops the page's JavaScript with
"Identifier 'THEBE_JS_URL' has already been declared".
"""


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", _drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
