/* Root-key wrapping by a PKCS#11 token (an HSM, or SoftHSM2 in tests). */
#include <dlfcn.h>
#include <errno.h>
#include <p11-kit/pkcs11.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "basic/macro.h"
#include "kms/seal.h"

static int p11_fail(kms_err *err, int e, const char *what, CK_RV rv)
{
    if (err)
        snprintf(err->message, sizeof(err->message), "PKCS#11 %s failed (CKR 0x%lx)", what, (unsigned long)rv);
    return e;
}

/* Finds the wrapping key in the session, or generates it when CREATE. */
static int find_wrap_key(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, bool create, CK_OBJECT_HANDLE *ret,
                         kms_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ATTRIBUTE find[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_LABEL, (void *)KMS_PKCS11_LABEL, STRLEN(KMS_PKCS11_LABEL)},
    };
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(s, find, ELEMENTSOF(find));
    if (rv != CKR_OK)
        return p11_fail(err, -EIO, "C_FindObjectsInit", rv);
    rv = f->C_FindObjects(s, ret, 1, &n);
    f->C_FindObjectsFinal(s);
    if (rv != CKR_OK)
        return p11_fail(err, -EIO, "C_FindObjects", rv);
    if (n == 1)
        return 0;
    if (!create) {
        if (err)
            snprintf(err->message, sizeof(err->message), "the token has no key labelled %s", KMS_PKCS11_LABEL);
        return -ENOKEY;
    }
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = KMS_KEY_BYTES;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_LABEL, (void *)KMS_PKCS11_LABEL, STRLEN(KMS_PKCS11_LABEL)},
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    rv = f->C_GenerateKey(s, &gen, tmpl, ELEMENTSOF(tmpl), ret);
    return rv == CKR_OK ? 0 : p11_fail(err, -EIO, "C_GenerateKey", rv);
}

int kms_pkcs11_crypt(const char *module, unsigned long slot, const char *pin, size_t pin_len, bool create,
                     bool encrypt, const uint8_t iv[KMS_NONCE_BYTES], const uint8_t *aad, size_t aad_len,
                     const uint8_t *in, size_t n, uint8_t *out, kms_err *err)
{
    if (!module || !*module) {
        if (err)
            snprintf(err->message, sizeof(err->message), "no PKCS#11 module given (--pkcs11-module)");
        return -EINVAL;
    }
    if (!encrypt && n < KMS_TAG_BYTES)
        return -EINVAL;
    void *lib = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        if (err)
            snprintf(err->message, sizeof(err->message), "cannot load the PKCS#11 module %s", module);
        return -ENOENT;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR f = NULL;
    int r = -EIO;
    CK_RV rv;
    if (!get || get(&f) != CKR_OK || !f) {
        if (err)
            snprintf(err->message, sizeof(err->message), "%s is not a PKCS#11 module", module);
        dlclose(lib);
        return -EINVAL;
    }
    rv = f->C_Initialize(NULL);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        dlclose(lib);
        return p11_fail(err, -EIO, "C_Initialize", rv);
    }
    CK_SESSION_HANDLE s;
    rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        r = p11_fail(err, -ENODEV, "C_OpenSession (is the slot right?)", rv);
        goto finalize;
    }
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID || rv == CKR_ARGUMENTS_BAD) {
        if (err)
            snprintf(err->message, sizeof(err->message), "the token refused the PIN");
        r = -EKEYREJECTED;
        goto close;
    }
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        r = p11_fail(err, rv == CKR_PIN_LOCKED ? -EKEYREJECTED : -EIO, "C_Login", rv);
        goto close;
    }
    CK_OBJECT_HANDLE key;
    if ((r = find_wrap_key(f, s, create, &key, err)) < 0)
        goto logout;
    CK_GCM_PARAMS gcm = {.pIv = (CK_BYTE_PTR)iv, .ulIvLen = KMS_NONCE_BYTES, .ulIvBits = KMS_NONCE_BYTES * 8,
                         .pAAD = (CK_BYTE_PTR)aad, .ulAADLen = aad_len, .ulTagBits = KMS_TAG_BYTES * 8};
    CK_MECHANISM mech = {CKM_AES_GCM, &gcm, sizeof(gcm)};
    CK_ULONG out_len = encrypt ? n + KMS_TAG_BYTES : n;
    if (encrypt) {
        rv = f->C_EncryptInit(s, &mech, key);
        if (rv == CKR_OK)
            rv = f->C_Encrypt(s, (CK_BYTE_PTR)in, n, out, &out_len);
    } else {
        rv = f->C_DecryptInit(s, &mech, key);
        if (rv == CKR_OK)
            rv = f->C_Decrypt(s, (CK_BYTE_PTR)in, n, out, &out_len);
    }
    if (rv == CKR_ENCRYPTED_DATA_INVALID || (!encrypt && rv == CKR_GENERAL_ERROR)) {
        if (err)
            snprintf(err->message, sizeof(err->message), "the sealed root key does not authenticate with the token's key");
        r = -EBADMSG;
    } else if (rv != CKR_OK)
        r = p11_fail(err, -EIO, encrypt ? "C_Encrypt" : "C_Decrypt", rv);
    else if (out_len != (encrypt ? n + KMS_TAG_BYTES : n - KMS_TAG_BYTES))
        r = p11_fail(err, -EIO, "AES-GCM (unexpected length)", rv);
    else
        r = 0;
logout:
    f->C_Logout(s);
close:
    f->C_CloseSession(s);
finalize:
    f->C_Finalize(NULL);
    dlclose(lib);
    return r;
}
