#-----------------------------------------------------------------------------
# The backend ships inside the extension: voco_backend/ and its pyproject.toml (the third-party requirements
# the module pip-installs) are copied beside the module as <scripted modules dir>/VoCoSlicerBackend/, where
# VoCoSlicerLib/backendEnvironment.py finds them. Only third-party packages are installed from PyPI.
set(VOCO_BACKEND_SOURCE_DIR ${CMAKE_CURRENT_LIST_DIR}/..)
file(GLOB_RECURSE VOCO_BACKEND_FILES RELATIVE ${VOCO_BACKEND_SOURCE_DIR} CONFIGURE_DEPENDS
  ${VOCO_BACKEND_SOURCE_DIR}/voco_backend/*.py
  ${VOCO_BACKEND_SOURCE_DIR}/voco_backend/resources/*.json
  )
list(APPEND VOCO_BACKEND_FILES pyproject.toml)
list(SORT VOCO_BACKEND_FILES)

function(vocoslicer_install_backend MODULE_NAME)
  foreach(backendFile ${VOCO_BACKEND_FILES})
    get_filename_component(backendDir ${backendFile} DIRECTORY)
    configure_file(${VOCO_BACKEND_SOURCE_DIR}/${backendFile}
      ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${MODULE_NAME}Backend/${backendFile} COPYONLY)
    install(FILES ${VOCO_BACKEND_SOURCE_DIR}/${backendFile}
      DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${MODULE_NAME}Backend/${backendDir}
      COMPONENT RuntimeLibraries)
  endforeach()
endfunction()
