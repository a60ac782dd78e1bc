"""The public signing keys, as agents pin them."""

from rest_framework import serializers


class SigningKeySerializer(serializers.Serializer):
    key_id = serializers.CharField()
    algorithm = serializers.CharField(default="ed25519")
    public_key = serializers.CharField(help_text="Raw 32-byte Ed25519 public key, base64.")
    primary = serializers.BooleanField(source="is_primary")
    created_at = serializers.DateTimeField()
    endorsed_by = serializers.CharField(
        help_text="Key id of the previous primary key that signed this one (empty for the first).")
    endorsement = serializers.CharField(help_text="Base64 Ed25519 signature by endorsed_by over agent_client.protocol."
                                                  "key_endorsement_bytes(key_id, public_key).")


class SigningKeysSerializer(serializers.Serializer):
    keys = SigningKeySerializer(many=True)
