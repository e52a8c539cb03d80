/*
** lplugin.h -- plugins and Lua: the functions C plugins register for Lua
** (register_lua) made reachable by `require "MODULE"` in a sandbox, each call
** taking its arguments to one JSON array and its JSON result back to Lua.
** Depends on: plugin host, sandbox, ljson. Loop thread.
*/
#ifndef CM_LPLUGIN_H
#define CM_LPLUGIN_H

#include "error.h"
#include "plugin.h"
#include "sandbox.h"

/* Let require reach every Lua module the plugins of host have now (a
** read-only table of MODULE.NAME functions); host is borrowed and must
** outlive sb's scripts. Call again after the plugins are reloaded: modules
** come back fresh (a function of an unloaded plugin raises "MODULE.NAME: no
** loaded plugin has this function"). CM_ENOMEM when Lua cannot. */
int cm_lua_plugins_attach(cm_sandbox *sb, cm_plugin_host *host, cm_err *err);

#endif
