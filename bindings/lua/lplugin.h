/*
** lplugin.h -- plugins and Lua: the functions plugins register for Lua
** (register_lua) made reachable by `require "MODULE"` in a sandbox, each call
** taking its arguments to one JSON array and its JSON result back to Lua;
** and Lua plugins, loaded by the plugin host through the loader given here.
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

/* Let host load Lua plugins: a config path that is a directory (its init.lua
** runs) or a .lua file. Each runs in a sandbox of its own with limits (NULL:
** the defaults), the same allow-list as workflows, and `require
** "caremesh.plugin"` (docs/plugins.md): log, config, on (engine events),
** channel, export (functions for workflows), get, find, put, instances.
** Registrations are taken only while the file runs; an error there refuses
** the plugin with "FILE:LINE: message". CM_ENOMEM. */
int cm_lua_plugins_enable(cm_plugin_host *host, const cm_sandbox_limits *limits, cm_err *err);

#endif
