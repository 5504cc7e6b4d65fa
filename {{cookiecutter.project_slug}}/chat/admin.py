from django.contrib import admin

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "status", "content", "error", "detail", "created_at"]
    readonly_fields = ["error", "detail", "created_at"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "updated_at"]
    list_select_related = ["owner"]
    search_fields = ["title", "owner__username"]
    inlines = [MessageInline]
