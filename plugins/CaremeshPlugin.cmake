# caremesh_add_plugin(NAME SOURCE...): build a caremesh C plugin as NAME.so.
#
# In this tree the plugin header comes from core/include. Out of tree, set
# CAREMESH_INCLUDE_DIR to the directory that holds caremesh/plugin.h (a
# checkout's core/include) before calling it:
#
#   cmake_minimum_required(VERSION 3.18)
#   project(my_plugin C)
#   set(CAREMESH_INCLUDE_DIR /path/to/caremesh/core/include)
#   include(/path/to/caremesh/plugins/CaremeshPlugin.cmake)
#   caremesh_add_plugin(my_plugin my_plugin.c)
if(NOT CAREMESH_INCLUDE_DIR)
  get_filename_component(_cm_include ${CMAKE_CURRENT_LIST_DIR}/../core/include ABSOLUTE)
  set(CAREMESH_INCLUDE_DIR ${_cm_include} CACHE PATH "directory holding caremesh/plugin.h")
endif()

function(caremesh_add_plugin name)
  add_library(${name} MODULE ${ARGN})
  set_target_properties(${name} PROPERTIES PREFIX "" C_STANDARD 11 C_VISIBILITY_PRESET hidden)
  target_include_directories(${name} PRIVATE ${CAREMESH_INCLUDE_DIR})
endfunction()
