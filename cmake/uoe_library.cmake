# One static library per source folder (docs/building.md, Libraries):
#
#   uoe_folder_library(<folder>
#     DEPENDS <folder>...           the folders below this one whose libraries it links
#     SOURCES <file>...             compiled once, shared by the CPU and the GPU build
#     [VARIANT_SOURCES <file>...]   compiled once per build: see below
#     [CUDA_SOURCES <file>...]      .cu files, GPU build only
#     [LINK <target>...]            third-party libraries both builds link (PUBLIC)
#     [CUDA_LINK <target>...])      third-party libraries only the GPU build links (PUBLIC)
#
# makes uoe_<folder> (the CPU build) and, with UOE_CUDA, uoe_<folder>_cuda (the GPU build) from
# the same objects (uoe_<folder>_objects), each linking the same build of the libraries below it:
# uoe_layers links uoe_parallel, uoe_layers_cuda links uoe_parallel_cuda. A folder without .cu files
# still gets its _cuda library when a folder below has one (the same archive over the GPU build
# beneath), so a GPU binary links one consistent stack. The CPU libraries never link a CUDA
# library: uoe-train and the CPU tests load none (docs/gpu.md, Build).
#
# VARIANT_SOURCES are the few files that know which build they are in: compiled into uoe_<folder>
# without UOE_HAVE_CUDA (with UOE_CUDA_BUILT=1 when the GPU build exists beside it) and into
# uoe_<folder>_cuda with UOE_HAVE_CUDA=1. Files are named relative to the folder; adding one is a
# line in the folder's CMakeLists.txt.
#
# Each library's links are checked against the layering (tests/cli/check_layering.py, CTest
# cli.layering) through ${CMAKE_BINARY_DIR}/layering_targets.txt, written by
# uoe_write_layering_targets() at the end of the top-level CMakeLists.txt.

function(uoe_folder_library folder)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "DEPENDS;SOURCES;VARIANT_SOURCES;CUDA_SOURCES;LINK;CUDA_LINK")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "uoe_folder_library(${folder}): unexpected arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  set(name uoe_${folder})
  set(dir ${PROJECT_SOURCE_DIR}/${folder})
  foreach(list SOURCES VARIANT_SOURCES CUDA_SOURCES)
    list(TRANSFORM arg_${list} PREPEND ${dir}/)
  endforeach()
  set(cpu_deps "")
  set(cuda_deps "")
  foreach(dep ${arg_DEPENDS})
    if(NOT TARGET uoe_${dep})
      message(FATAL_ERROR "uoe_folder_library(${folder}): uoe_${dep} is not defined yet; add_subdirectory(${dep}) "
                          "must come before add_subdirectory(${folder})")
    endif()
    list(APPEND cpu_deps uoe_${dep})
    list(APPEND cuda_deps uoe_${dep}_cuda)
  endforeach()

  # The shared objects compile against the CPU libraries' usage requirements (include directories,
  # MPI, HDF5, ...); neither archive inherits these links (they take the objects as sources).
  add_library(${name}_objects OBJECT ${arg_SOURCES})
  target_link_libraries(${name}_objects PRIVATE uoe_project ${cpu_deps} ${arg_LINK} uoe_warnings)

  # Each archive compiles only its variant and .cu sources itself, so a definition on the archive
  # reaches those files and nothing else.
  add_library(${name} STATIC $<TARGET_OBJECTS:${name}_objects> ${arg_VARIANT_SOURCES})
  target_link_libraries(${name} PUBLIC uoe_project ${cpu_deps} ${arg_LINK} PRIVATE uoe_warnings)
  if(UOE_CUDA)
    # The CPU build's --device cuda error points at the GPU build beside it.
    target_compile_definitions(${name} PRIVATE UOE_CUDA_BUILT=1)
  endif()
  set_property(GLOBAL APPEND PROPERTY uoe_folder_libraries ${name}_objects ${name})

  if(UOE_CUDA)
    add_library(${name}_cuda STATIC $<TARGET_OBJECTS:${name}_objects> ${arg_VARIANT_SOURCES} ${arg_CUDA_SOURCES})
    target_link_libraries(${name}_cuda PUBLIC uoe_project ${cuda_deps} ${arg_LINK} ${arg_CUDA_LINK}
                          PRIVATE uoe_warnings)
    target_compile_definitions(${name}_cuda PUBLIC UOE_HAVE_CUDA=1)
    set_property(GLOBAL APPEND PROPERTY uoe_folder_libraries ${name}_cuda)
  endif()
endfunction()

# Writes ${CMAKE_BINARY_DIR}/layering_targets.txt for tests/cli/check_layering.py: one line per
# folder library and what it links (`link <library> <item>`, target_link_libraries as written), and
# one per source file of every target in the project (`source <target> <path>`), so the check can
# also tell a library that links a folder above its own, and a source file no target builds.
function(uoe_write_layering_targets)
  set(text "# Written by uoe_write_layering_targets (cmake/uoe_library.cmake) for tests/cli/check_layering.py.\n")
  get_property(libraries GLOBAL PROPERTY uoe_folder_libraries)
  foreach(lib ${libraries})
    string(APPEND text "library ${lib}\n")
    get_target_property(links ${lib} LINK_LIBRARIES)
    get_target_property(interface ${lib} INTERFACE_LINK_LIBRARIES)
    set(items ${links} ${interface})
    list(REMOVE_DUPLICATES items)
    foreach(item ${items})
      if(NOT item MATCHES "-NOTFOUND$")
        string(APPEND text "link ${lib} ${item}\n")
      endif()
    endforeach()
  endforeach()
  set(dirs ${PROJECT_SOURCE_DIR})
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(sub DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${sub})
    get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target ${targets})
      get_target_property(type ${target} TYPE)
      if(type STREQUAL "INTERFACE_LIBRARY" OR type STREQUAL "UTILITY")
        continue()
      endif()
      get_target_property(sources ${target} SOURCES)
      get_target_property(source_dir ${target} SOURCE_DIR)
      foreach(src ${sources})
        if(src MATCHES "^\\$<")  # $<TARGET_OBJECTS:...>: listed under the target that compiles them
          continue()
        endif()
        cmake_path(ABSOLUTE_PATH src BASE_DIRECTORY ${source_dir} NORMALIZE)
        string(APPEND text "source ${target} ${src}\n")
      endforeach()
    endforeach()
  endwhile()
  file(WRITE ${CMAKE_BINARY_DIR}/layering_targets.txt "${text}")
endfunction()
