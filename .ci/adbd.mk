# Builds AOSP adbd (the daemon a phone runs) for this Linux host from Debian's android-platform-tools source tree.
# Run from the top of the unpacked source: make -f adbd.mk VERSION=29.0.6-28 -j2
# The file list follows system/core/adb/Android.bp's `adbd` binary and what it links statically on linux_glibc
# (libadbd_core, libadbd_services, libadbconnection_server, libadbd_auth, libcrypto_utils, libdiagnose_usb);
# libbase, libcutils, liblog and BoringSSL's libcrypto come from Debian's android-lib*-dev packages.

VERSION ?= unknown
CC = clang
CXX = clang++
MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH)

ADB := system/core/adb
SOURCES := \
  $(addprefix $(ADB)/, \
    adb.cpp adb_io.cpp adb_listeners.cpp adb_trace.cpp adb_unique_fd.cpp adb_utils.cpp \
    fdevent/fdevent.cpp fdevent/fdevent_poll.cpp fdevent/fdevent_epoll.cpp \
    services.cpp sockets.cpp socket_spec.cpp sysdeps/errno.cpp \
    transport.cpp transport_fd.cpp transport_local.cpp transport_usb.cpp types.cpp \
    sysdeps_unix.cpp sysdeps/posix/network.cpp \
    daemon/auth.cpp daemon/jdwp_service.cpp daemon/usb_dummy.cpp \
    daemon/file_sync_service.cpp daemon/services.cpp daemon/shell_service.cpp shell_service_protocol.cpp \
    daemon/main.cpp adbconnection/adbconnection_server.cpp) \
  frameworks/native/libs/adbd_auth/adbd_auth.cpp \
  system/core/diagnose_usb/diagnose_usb.cpp
C_SOURCES := system/core/libcrypto_utils/android_pubkey.c

OBJDIR := out-adbd
OBJECTS := $(addprefix $(OBJDIR)/, $(SOURCES:.cpp=.o) $(C_SOURCES:.c=.o))

# adbd_defaults: a daemon (ADB_HOST=0) that never allows `adb root` and always asks for authentication.
CPPFLAGS := \
  -D_GNU_SOURCE -DADB_HOST=0 -DALLOW_ADBD_ROOT=0 \
  -DANDROID_BASE_UNIQUE_FD_DISABLE_IMPLICIT_CONVERSION=1 \
  -DPLATFORM_TOOLS_VERSION='"$(firstword $(subst -, ,$(VERSION)))"' -DADB_VERSION='"$(VERSION)"' \
  -I$(ADB) -I$(ADB)/daemon/include -I$(ADB)/adbconnection/include \
  -Isystem/core/include -Isystem/core/libcrypto_utils/include -Isystem/core/diagnose_usb/include \
  -Iframeworks/native/libs/adbd_auth/include -Isystem/core/libasyncio/include \
  -I/usr/include/android
CXXFLAGS := -std=gnu++2a -O2 -Wno-deprecated-declarations -Wno-macro-redefined
CFLAGS := -O2
LDLIBS := \
  -L/usr/lib/$(MULTIARCH)/android -Wl,-rpath=/usr/lib/$(MULTIARCH)/android \
  -lbase -lcutils -llog -lcrypto -lcap -lresolv -lutil -lpthread

# Two sources lean on headers that Android's own tree includes for them transitively.
$(OBJDIR)/$(ADB)/daemon/file_sync_service.o: CPPFLAGS += -include system/core/libcutils/include/private/fs_config.h
$(OBJDIR)/frameworks/native/libs/adbd_auth/adbd_auth.o: CPPFLAGS += -include atomic -include optional

adbd: $(OBJECTS)
	$(CXX) -pie -o $@ $^ $(LDLIBS)

$(OBJDIR)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) -c -o $@ $< $(CXXFLAGS) $(CPPFLAGS)

$(OBJDIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) -c -o $@ $< $(CFLAGS) $(CPPFLAGS)
